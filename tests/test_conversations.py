"""The world's multi-turn conversations: seeded, held-out combinations untouched, media on several
turns, and batches that give every medium its own token at its own position."""
import sys
from pathlib import Path

import pytest
import torch

from runtime import media as media_io
from train import conversations, synthetic
from train.batches import Tokens, collate
from train.data.records import Record, all_inputs, read_records, turn_inputs, write_records
from train.stages import StageModel
from train.train import make_dataset
from train.train_config import load_config

sys.path.insert(0, str(Path(__file__).parent))
from train_world import PLAIN_WORLD  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {"train": {"ask": 3, "compare": 3, "transform": 4, "switch": 3}, "heldout": {"ask": 2, "compare": 1, "transform": 3, "switch": 2}}
WORLD_COUNTS = {"train": {"image": 2, "video": 1, "audio": 1, "text_to_image": 1}, "heldout": {"image": 1}}


def _key(a):
    return tuple(sorted((k, v) for k, v in a.items() if k in {"shape", "colour", "background", "position", "motion", "sound", "pitch", "register"}))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir) -> Path:
    from train.embed_captions import embed_captions

    root = synthetic.write_world(tmp_path_factory.mktemp("world"), 0, WORLD_COUNTS, PLAIN_WORLD, progress=False)
    conversations.write_conversations(root, 0, COUNTS, progress=False)
    embed_captions(tiny_dir, root, progress=False)
    return root


def test_the_same_seed_plans_the_same_conversations_and_another_seed_others():
    first = [r.to_json() for r, _ in conversations.plan_conversations(0)]
    assert first == [r.to_json() for r, _ in conversations.plan_conversations(0)]
    assert first != [r.to_json() for r, _ in conversations.plan_conversations(1)]
    kinds = {(r.split, r.attributes["kind"]) for r, _ in conversations.plan_conversations(0)}
    assert kinds == {(s, k) for s in ("train", "heldout") for k in conversations.KINDS}


def test_held_out_combinations_never_appear_in_a_train_conversation():
    pools = synthetic.combination_splits(0)
    held = {m: {_key(a) for a in p["heldout"]} for m, p in pools.items()}
    train = {m: {_key(a) for a in p["train"]} for m, p in pools.items()}
    for record, media in conversations.plan_conversations(0):
        subject_modality = record.target if record.target != "text" else record.attributes["modality"]
        subject = _key(record.attributes)
        if record.split == "train":
            # every medium shown or asked for, and the combination the answer is about
            assert all(_key(a) in train[path.split("/")[2]] for path, a in media.items()), record.id
            assert subject in train[subject_modality], record.id
        else:
            assert subject in held[subject_modality], record.id  # what the follow-up asks about is held out


def test_conversations_say_what_their_combinations_are():
    for record, media in conversations.plan_conversations(0, COUNTS):
        kind, modality = record.attributes["kind"], record.attributes["modality"]
        assert record.caption == synthetic.CAPTION[record.target if record.target != "text" else modality](
            {k: record.attributes[k] for k in conversations.HEADS[record.target if record.target != "text" else modality]}
        )
        last = record.turns[-1]["assistant"]
        if kind in conversations.FOLLOW_UP_X_TO_TEXT:
            head = record.attributes["asks"]
            assert conversations.read_follow_up(last, modality, head, record.attributes) == record.attributes[head]
        else:
            assert last.endswith("".join(synthetic.signal_tokens(record.target)))
            source = conversations._combo_of(modality, record.attributes["from"])
            target = {h: record.attributes[h] for h in conversations.HEADS[record.target]}
            shared = set(source) & set(target)
            changed = {h for h in shared if source[h] != target[h]}
            if kind == "transform":  # one attribute changes
                assert changed == {record.attributes["changes"]}
            else:  # another modality: what the two share stays, and what the switch asks for is added
                assert not changed and record.attributes["changes"] in set(target) - set(source)
        if kind == "compare":  # media on two turns
            assert [bool(m) for m in turn_inputs(record)] == [True, True, False]


def test_written_conversations_reuse_the_world_s_media_and_are_real_files(world):
    records = list(read_records(world / conversations.RECORDS_FILE))
    assert len(records) == sum(sum(c.values()) for c in COUNTS.values())
    used = {p for r in records for p in (*all_inputs(r), *r.outputs.values())}
    for path in used:
        assert (world / path).is_file()
    shown = {p: r for r in records for p in all_inputs(r) if p.endswith(".png")}
    for path, record in list(shown.items())[:3]:
        assert media_io.read_image(world / path).shape == (64, 64, 3)
    splits = {s: {p for r in records if r.split == s for p in (*all_inputs(r), *r.outputs.values())} for s in ("train", "heldout")}
    assert not splits["train"] & splits["heldout"]
    again = conversations.ensure_conversations(world, 0)  # written already: not rewritten
    assert again.read_text() == (world / conversations.RECORDS_FILE).read_text()


def test_a_medium_per_span_in_a_conversation(tiny_model):
    tokens = Tokens(tiny_model.tokenizer, tiny_model.config)
    turns = [
        {"human": "what shape is it?", "assistant": "it is a circle"},
        {"human": "and these?", "assistant": "a tone", "inputs": {"audio": "a.wav", "video": "v.mp4"}},
    ]
    ids, labels, positions = tokens.dialogue(turns, ["image"])
    assert len(positions) == 3 and len(set(positions)) == 3
    assert all(ids[p] == tiny_model.tokenizer.unk_token_id for p in positions)
    text = tiny_model.tokenizer.decode(ids)
    assert text.count("<Img><unk></Img>") == 3
    assert "### Human: <Img><unk></Img> <Img><unk></Img> and these?" in text
    assert all(labels[p] == -100 for p in positions)  # the labels are the answers, never a media slot
    # a record without per-turn media: the single-turn layout, its one slot before the first text
    one, _, (pos,) = tokens.dialogue(turns[:1], ["image"])
    assert one == ids[: len(one)] and pos == positions[0]


def test_stage_3_places_each_medium_of_a_batch_at_its_own_position(world, tiny_dir):
    from train.model import load_checkpoint

    model = load_checkpoint(tiny_dir)
    config = load_config(ROOT / "train" / "configs" / "stage_3.yaml", "tiny")
    dataset = make_dataset(model, config, world, False)
    several = [i for i, e in enumerate(dataset.examples) if len(e.media) > 1]
    assert several and any(e.targets for e in dataset.examples if "conversation" in str(e.media))
    batch = collate([dataset[i] for i in several[:2]] + [dataset[0]], model.tokenizer.unk_token_id)
    stage = StageModel(model, config)
    embeds = stage.embed(batch)
    plain = model.embed_tokens(batch["ids"])
    for row, placed in enumerate(batch["media"]):
        for position, modality, clips in placed:
            want = stage.media_tokens(modality, clips)[0]
            assert torch.allclose(embeds[row, position], want, atol=1e-5)
        others = [p for p in range(batch["ids"].shape[1]) if p not in {m[0] for m in placed}]
        assert torch.equal(embeds[row, others], plain[row, others])
    # two different media of one conversation give two different tokens
    first = batch["media"][0]
    assert not torch.allclose(embeds[0, first[0][0]], embeds[0, first[1][0]])
    losses = stage(batch)
    assert torch.isfinite(losses["loss"])


def test_stages_1_and_2_leave_the_conversations_to_stage_3(world, tiny_model):
    for stage, task_records in ((1, "caption"), (2, "signal")):
        config = load_config(ROOT / "train" / "configs" / f"stage_{stage}.yaml", "tiny")
        dataset = make_dataset(tiny_model, config, world, False)
        conversation_train = sum(COUNTS["train"].values())
        assert dataset.dropped["conversation records (skip_sources)"] == conversation_train, task_records


def test_a_combination_the_world_rendered_is_not_rendered_again(tmp_path):
    counts = {"train": {"ask": 1}}
    (record, media), = conversations.plan_conversations(0, counts)
    (path, combo), = media.items()
    modality = path.split("/")[2]
    mine = f"{modality}/by-the-world{synthetic.EXT[modality]}"
    (tmp_path / modality).mkdir()
    synthetic.write_medium(tmp_path / mine, modality, combo)
    world_record = Record(
        id="w-1", source="synthetic", split="train", turns=[{"human": "q", "assistant": "a"}],
        inputs={modality: mine}, caption=synthetic.CAPTION[modality](combo),
    )
    write_records(tmp_path / synthetic.RECORDS_FILE, [world_record])
    conversations.write_conversations(tmp_path, 0, counts, progress=False)
    (written,) = read_records(tmp_path / conversations.RECORDS_FILE)
    assert all_inputs(written) == [mine]
    assert not (tmp_path / "conversation").exists()
