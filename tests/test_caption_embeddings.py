"""Caption embeddings: each decoder's own text encoder, sharded safetensors keyed by record id, resumable."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train import synthetic
from train.checkpoint import read_config
from train.data.embeddings import INDEX, CaptionEmbeddings, EmbeddingError, embeddings_dir
from train.data.records import read_records
from train.decoders import caption_length, encode_captions, load_text_encoder, text_encoder_embedding
from train.embed_captions import embed_captions
from train_world import PLAIN_WORLD

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {"train": {"image": 3, "text_to_audio": 2, "text_to_video": 1}, "heldout": {"audio": 1}}
DECODERS = ["sd", "audioldm"]  # a CLIP one and the CLAP one; zeroscope runs the CLIP path again
SHARD, BATCH = 3, 2


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # PLAIN_WORLD: the seven captions the shard counts below are written for
    return synthetic.write_world(tmp_path_factory.mktemp("world"), seed=5, counts=COUNTS, world=PLAIN_WORLD, progress=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data, tiny_dir) -> Path:
    root = Path(shutil.copytree(data, tmp_path_factory.mktemp("straight") / "data"))
    done = embed_captions(tiny_dir, root, DECODERS, batch=BATCH, shard_size=SHARD, progress=False)
    assert done == {"sd": 3, "audioldm": 3}  # 7 captions in shards of 3
    return root


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, data, uninterrupted, tiny_dir):
    root = Path(shutil.copytree(data, tmp_path / "data"))

    def stop(shard: str) -> None:
        raise KeyboardInterrupt(shard)

    with pytest.raises(KeyboardInterrupt, match="shard-00000"):
        embed_captions(tiny_dir, root, DECODERS, batch=BATCH, shard_size=SHARD, on_shard=stop, progress=False)
    assert [p.name for p in embeddings_dir(root, "sd").iterdir()] == ["shard-00000.safetensors"]  # no index yet
    done = embed_captions(tiny_dir, root, DECODERS, batch=BATCH, shard_size=SHARD, progress=False)
    assert done == {"sd": 2, "audioldm": 3}  # the finished shard was kept
    for decoder in DECODERS:
        assert _files(embeddings_dir(root, decoder)) == _files(embeddings_dir(uninterrupted, decoder))
    assert embed_captions(tiny_dir, root, DECODERS, batch=BATCH, shard_size=SHARD, progress=False) == {"sd": 0, "audioldm": 0}


def test_one_embedding_per_captioned_record(uninterrupted, tiny_dir):
    records = list(read_records(uninterrupted / synthetic.RECORDS_FILE))
    config = read_config(tiny_dir)
    for decoder, modality in (("sd", "image"), ("audioldm", "audio")):
        section = config["decoders"][modality]
        emb = CaptionEmbeddings(uninterrupted, decoder)
        assert len(emb) == len(records) and sorted(emb.ids()) == sorted(r.id for r in records)
        assert "no-such-record" not in emb
        encoder, tokenizer = load_text_encoder(tiny_dir / "decoders" / decoder, section)
        for r in records:
            got = emb[r.id]
            assert got.shape == (section["embed_tokens"], section["embed_dim"]) and got.dtype == torch.float32
            want = encode_captions(encoder, tokenizer, [r.caption], section)[0]  # alone, not in its batch
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            if decoder == "audioldm":
                torch.testing.assert_close(got.norm(dim=-1), torch.ones(1))
        with pytest.raises(KeyError, match="no-such-record"):
            emb["no-such-record"]
    captions = [r.caption for r in records]
    sd = CaptionEmbeddings(uninterrupted, "sd")
    assert len({tuple(sd[r.id].flatten().tolist()) for r in records}) == len(set(captions))  # captions differ, so do they


def test_every_world_caption_keeps_its_words_within_the_tokenizer_s_ids_and_positions(tiny_dir):
    """The tiny caption vocabularies (256 ids) are sized to the world: its merges end before the
    ids do, no caption word is unknown, and every word fits the positions (only CLIP's EOS is cut,
    as CLIP cuts a long prompt)."""
    config = read_config(tiny_dir)
    for modality, section in config["decoders"].items():
        _, tokenizer = load_text_encoder(tiny_dir / "decoders" / section["name"], section)
        assert any(token.startswith("<|unused") for token in tokenizer.get_vocab())
        ids = tokenizer([synthetic.CAPTION[modality](a) for a in synthetic.combinations(modality)]).input_ids
        assert not any(tokenizer.unk_token_id in row for row in ids)
        assert max(len(row) for row in ids) - 1 <= caption_length(section)


def test_captions_are_encoded_as_the_unconditional_embedding_was(tiny_dir):
    """The committed "" embedding, reproduced through the stored tokenizer and encoder."""
    config = read_config(tiny_dir)
    for section in config["decoders"].values():
        folder = tiny_dir / "decoders" / section["name"]
        encoder, tokenizer = load_text_encoder(folder, section)
        assert tokenizer.model_max_length == caption_length(section)
        tokens = tokenizer("", padding="max_length", max_length=caption_length(section), return_tensors="pt")
        got = torch.atleast_2d(text_encoder_embedding(encoder, tokens.input_ids, tokens.attention_mask)[0])
        want = load_file(str(folder / "uncond_embedding.safetensors"))["embedding"]
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)  # the committed bits are another CPU's rounding


def test_a_changed_caption_re_encodes_only_its_shard(tmp_path, uninterrupted, tiny_dir):
    root = Path(shutil.copytree(uninterrupted, tmp_path / "data"))
    path = root / synthetic.RECORDS_FILE
    lines = path.read_text().splitlines()
    index = json.loads((embeddings_dir(root, "sd") / INDEX).read_text())
    last_id = index["shards"][-1]["ids"][0]
    record = next(json.loads(line) for line in lines if json.loads(line)["id"] == last_id)
    record["caption"] = "a green square in the centre of a red background"
    path.write_text("\n".join(json.dumps(record) if json.loads(line)["id"] == last_id else line for line in lines) + "\n")
    assert embed_captions(tiny_dir, root, ["sd"], batch=BATCH, shard_size=SHARD, progress=False) == {"sd": 1}
    before, after = _files(embeddings_dir(uninterrupted, "sd")), _files(embeddings_dir(root, "sd"))
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {index["shards"][-1]["file"], INDEX}


def test_missing_index_is_one_clear_error(tmp_path):
    with pytest.raises(EmbeddingError, match="embeddings/sd/index.json: missing; run train/embed_captions.py"):
        CaptionEmbeddings(tmp_path, "sd")


def test_checkpoint_without_text_encoder_is_refused_in_one_line(tmp_path, data, tiny_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir / "decoders", ckpt / "decoders")
    shutil.copy(tiny_dir / "config.json", ckpt / "config.json")
    shutil.rmtree(ckpt / "decoders" / "sd" / "text_encoder")
    run = subprocess.run(
        [sys.executable, str(ROOT / "train" / "embed_captions.py"), "--checkpoint", str(ckpt), "--data", str(data), "--decoders", "sd"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {ckpt}/decoders/sd/text_encoder: missing; caption embeddings need the decoder's "
                      "text encoder and tokenizer (re-make or re-import the checkpoint)"]
    assert not (data / "embeddings").exists()


def test_unknown_decoder_and_bad_batch_are_refused(data, tiny_dir):
    with pytest.raises(ValueError, match="unknown decoder 'dalle'; this checkpoint has sd, zeroscope, audioldm"):
        embed_captions(tiny_dir, data, ["dalle"], progress=False)
    with pytest.raises(ValueError, match="--batch must be at least 1"):
        embed_captions(tiny_dir, data, ["sd"], batch=0, progress=False)
