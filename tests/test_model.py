"""Module shapes at the tiny preset and the checkpoint format."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from train.checkpoint import CheckpointError
from train.make_tiny import make_tiny
from train.model import load_checkpoint
from train.presets import SIGNAL_TOKEN_COUNTS, added_tokens, get_preset


def test_added_tokens_are_the_reference_38():
    tokens = added_tokens()
    assert len(tokens) == 38 and tokens[:3] == ["<Img>", "</Img>", "[IMG0]"] and tokens[-1] == "[AUD7]"


def test_every_module_has_its_preset_shape(tiny_model):
    cfg = tiny_model.config
    hidden, ib = cfg["llm"]["hidden_size"], cfg["imagebind"]
    size = ib["vision"]["image_size"]
    image = torch.randn(2, 1, 3, 1, size, size)
    emb = tiny_model.encoder.encode_vision(image)
    assert emb.shape == (2, ib["out_embed_dim"])
    assert tiny_model.input_projection(emb).shape == (2, hidden)
    logits = tiny_model.llm(input_ids=torch.tensor([[1, 5, 7]])).logits
    assert logits.shape == (1, 3, cfg["llm"]["vocab_size"])
    for modality, dec in cfg["decoders"].items():
        n = SIGNAL_TOKEN_COUNTS[modality]
        out = tiny_model.projectors[modality](torch.randn(2, n, hidden), torch.randn(2, n, hidden))
        assert out.shape == (2, dec["embed_tokens"], dec["embed_dim"])


def test_tokenizer_and_config_agree_on_signal_ids(tiny_model):
    tok, ids = tiny_model.tokenizer, tiny_model.config["tokens"]["signal_ids"]
    assert tok.convert_ids_to_tokens(ids["image"]) == ["[IMG0]", "[IMG1]", "[IMG2]", "[IMG3]"]
    assert len(ids["video"]) == 24 and len(ids["audio"]) == 8
    assert len(tok) == tiny_model.config["llm"]["vocab_size"]


def test_make_tiny_is_reproducible(tmp_path):
    made = [tmp_path / str(i) for i in range(2)]
    for folder in made:
        make_tiny(folder, seed=0)
    files = sorted(p.relative_to(made[0]) for p in made[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(made[1]) for p in made[1].rglob("*") if p.is_file())
    for rel in files:
        assert (made[0] / rel).read_bytes() == (made[1] / rel).read_bytes(), rel


def test_embedded_checkpoint_is_small_and_trained_from_make_tiny_s_layout(tmp_path, tiny_dir):
    made = make_tiny(tmp_path / "tiny", seed=0)
    files = sorted(p.relative_to(tiny_dir) for p in tiny_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "tiny") for p in (tmp_path / "tiny").rglob("*") if p.is_file())
    for rel in (f for f in files if f.suffix == ".safetensors"):
        got, want = load_file(str(tiny_dir / rel)), load_file(str(tmp_path / "tiny" / rel))
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}, rel
    # the presets are what the recipe started from: a setting changed in them reaches the embedded config
    assert (tiny_dir / "config.json").read_bytes() == (tmp_path / "tiny" / "config.json").read_bytes()
    # the embedded one is trained (train/reproduce.py): its weights are not make_tiny's
    trained = load_file(str(tiny_dir / "imagebind.safetensors"))
    assert not all(torch.equal(v, made.encoder.state_dict()[k]) for k, v in trained.items())
    assert sum((tiny_dir / f).stat().st_size for f in files) <= 30 * 10**6


@pytest.fixture()
def tiny_copy(tmp_path, tiny_dir):
    return shutil.copytree(tiny_dir, tmp_path / "ckpt")


def test_missing_part_is_named(tiny_copy):
    (tiny_copy / "lora.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lora.safetensors: missing"):
        load_checkpoint(tiny_copy)


def test_wrong_shape_is_named(tiny_copy):
    path = tiny_copy / "projector_image.safetensors"
    state = load_file(str(path))
    state["fc.weight"] = torch.zeros(3, 3)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"projector_image.safetensors: fc.weight has shape \(3, 3\)"):
        load_checkpoint(tiny_copy)


def test_config_that_does_not_match_the_files(tiny_copy):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["llm"]["num_hidden_layers"] += 1
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="llm.safetensors: does not match the config: .* missing"):
        load_checkpoint(tiny_copy)


def test_corrupt_part_is_named(tiny_copy):
    (tiny_copy / "imagebind.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="imagebind.safetensors: unreadable"):
        load_checkpoint(tiny_copy)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)


def test_lora_is_applied(tiny_model):
    ids = torch.tensor([[1, 5, 7]])
    with_adapter = tiny_model.llm(input_ids=ids).logits
    with tiny_model.llm.disable_adapter():
        without = tiny_model.llm(input_ids=ids).logits
    assert not torch.allclose(with_adapter, without)


def test_presets_differ_only_in_sizes():
    tiny, big = get_preset("tiny"), get_preset("nextgpt-7b")
    assert big["llm"]["hidden_size"] == 4096 and big["imagebind"]["out_embed_dim"] == 1024
    assert big["decoders"]["image"]["embed_tokens"] == 77 and big["decoders"]["video"]["embed_dim"] == 1024
    assert tiny["decoders"].keys() == big["decoders"].keys()
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")


def test_zeroscope_uses_sd_s_vae_stored_once(tiny_model, tiny_copy):
    assert tiny_model.decoders["video"]["vae"] is tiny_model.decoders["image"]["vae"]
    assert (tiny_copy / "decoders/sd/vae").is_dir() and not (tiny_copy / "decoders/zeroscope/vae").exists()
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["decoders"]["video"]["vae"]["latent_channels"] += 1
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'video' shares the VAE of 'image', but their vae configs differ"):
        load_checkpoint(tiny_copy)
