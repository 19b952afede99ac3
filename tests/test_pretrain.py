"""Stage 0 and the reproduction recipe: each part learns, the VAE rescaling is exact, runs are
seeded, and the recipe ends in a checkpoint of the embedded model's exact layout."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from runtime import media, preprocess
from runtime.inputs import prepare_inputs
from train import synthetic
from train.make_tiny import make_tiny
from train.model import load_checkpoint
from train.pretrain import PARTS, load_stage0_config, pretrain
from train.pretrain.autoencoders import _crops, _phases, rescale_latents
from train.pretrain.diffusion import init_from_image_part, jitter
from train.pretrain.encoders import AttributeHeads, SCENE, _batch, sibling_lists
from train.pretrain.loop import fit
from train.pretrain.world_data import ALWAYS_VARIED, WorldData
from train.reproduce import CONFIGS, reproduce

LIMIT = 16  # combinations per modality
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("init") / "tiny", seed=0)


@pytest.fixture(scope="module")
def data(fresh):
    data = WorldData(fresh.config, seed=0, progress=False, limit=LIMIT)
    # the caption embeddings the language part reads are left by the imagebind part
    PARTS["imagebind"](copy.deepcopy(fresh), data, _settings(1)["imagebind"], 0, False)
    return data


def _settings(steps: int) -> dict:
    config = load_stage0_config(CONFIGS / "stage_0.yaml")
    for part in PARTS:
        for section in ([config[part]] if "steps" in config[part] else config[part].values()):
            for phase in (section, section.get("whole", {})):
                phase.update(steps=steps, batch=min(phase.get("batch", 8), 8))
    return config


@pytest.mark.parametrize("part", list(PARTS))
def test_every_part_of_stage_0_learns(fresh, data, part):
    losses = {}
    for steps in (1, 30):
        torch.manual_seed(0)
        model = copy.deepcopy(fresh)
        losses[steps] = PARTS[part](model, data, _settings(steps)[part], 0, False)
    # every loss term the part reports falls (the mean of the last steps against the first step)
    assert all(losses[30][k] < losses[1][k] for k in losses[1]), losses


def test_imagebind_reads_each_medium_as_the_runtime_preprocesses_its_file(data, tmp_path):
    """The clips are rendered in threads and normalised once: each must still be its own medium's,
    bit for bit what the runtime makes of the file a user would send."""
    vision = data.config["imagebind"]["vision"]
    size, clip = vision["image_size"], (vision["video_clips"], vision["num_frames"], vision["clip_duration"])
    for i in (0, 7, LIMIT - 1):
        path = tmp_path / f"{i}.mp4"
        synthetic.write_medium(path, "video", data.combos["video"][i])
        frames, fps = media.read_video(path)
        expected = preprocess.video_to_clips(frames, fps, size, *clip)[0]
        assert torch.equal(data.vision_clips("video", torch.tensor([i]))[0, 0], torch.from_numpy(expected))
        image = preprocess.image_to_tensor(synthetic.render("image", data.combos["image"][i]), size)
        assert torch.equal(data.vision_clips("image", torch.tensor([i]))[0, 0, :, 0], torch.from_numpy(image))
        # a varied look: the file a user would send, drawn from the same seed
        look = synthetic.draw_look("image", data.combos["image"][i], np.random.default_rng([data.seed, i, 1]), ALWAYS_VARIED)
        path = tmp_path / f"{i}{look.suffix}"
        synthetic.write_look(path, "image", data.combos["image"][i], look)
        read = prepare_inputs(data.config["imagebind"], {"image": path})["image"][0]
        got = data.vision_clips("image", torch.tensor([i]), torch.tensor([1]))
        assert torch.equal(got, torch.from_numpy(read)[None]) and not torch.equal(got[0, 0, :, 0], torch.from_numpy(image))
    assert not np.array_equal(data.vision_pixels["video"][0], data.vision_pixels["video"][1])


def test_the_language_part_needs_the_imagebind_part_first(fresh):
    with pytest.raises(RuntimeError, match="run imagebind first"):
        PARTS["language"](copy.deepcopy(fresh), WorldData(fresh.config, seed=0, progress=False, limit=LIMIT), _settings(1)["language"], 0, False)


@pytest.mark.parametrize("modality, differs", [("video", "motion"), ("image", "position")])
def test_vision_batches_pair_media_that_differ_only_in_motion_or_position(fresh, modality, differs):
    data = WorldData(fresh.config, seed=0, progress=False)  # combinations only: nothing is rendered
    siblings = {m: sibling_lists(data, m) for m in ("image", "video", "audio")}
    index = _batch(data, modality, 128, torch.Generator().manual_seed(0), siblings).tolist()
    assert len(set(index)) == len(index) == 128
    combos = [data.combos[modality][i] for i in index]
    pairs = [(a, b) for a, b in zip(combos[::2], combos[1::2])]
    assert sum(all(a[k] == b[k] for k in SCENE) and a[differs] != b[differs] for a, b in pairs) >= 0.8 * len(pairs)


def test_sound_batches_are_whole_groups_that_differ_only_in_pitch(fresh):
    data = WorldData(fresh.config, seed=0, progress=False)  # combinations only: nothing is rendered
    siblings = {m: sibling_lists(data, m) for m in ("image", "video", "audio")}
    index = _batch(data, "audio", 48, torch.Generator().manual_seed(0), siblings).tolist()
    assert len(set(index)) == len(index) == 48
    combos = [data.combos["audio"][i] for i in index]
    groups = {(a["sound"], a["register"]) for a in combos}
    assert len(groups) <= 6  # 115 sounds in 12 groups of about 10: a batch of 48 holds few groups
    def members(key: tuple[str, str], among: list[dict]) -> list[str]:
        return [a["pitch"] for a in among if (a["sound"], a["register"]) == key]

    assert all(len(set(members(key, combos))) == len(members(key, combos)) for key in groups)  # pitch tells them apart
    complete = [key for key in groups if len(members(key, combos)) == len(members(key, data.combos["audio"]))]
    assert len(complete) >= len(groups) - 1  # every group whole but the one the batch size cuts
    other = _batch(data, "audio", 48, torch.Generator().manual_seed(1), siblings).tolist()
    assert other != index


def test_latent_rescaling_is_exact(fresh, data):
    vae = copy.deepcopy(fresh.decoders["image"]["vae"])
    x = data.pixels("image", torch.arange(8))
    before = vae.decode(vae.encode(x).latent_dist.mean).sample
    factor = rescale_latents(vae, x)
    posterior = vae.encode(x).latent_dist
    assert factor != pytest.approx(1.0)
    torch.testing.assert_close(vae.decode(posterior.mean).sample, before, atol=1e-4, rtol=1e-4)
    assert (posterior.mean * vae.config.scaling_factor).std().item() == pytest.approx(1.0, rel=1e-3)


def test_the_pixel_vae_trains_on_crops_then_on_whole_images():
    x = torch.randn(4, 3, 8, 8)
    crops = _crops(x, 5, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 5, 5)
    for sample, crop in zip(x, crops):  # each crop is a square of its own sample
        assert any(torch.equal(sample[:, i : i + 5, j : j + 5], crop) for i in range(4) for j in range(4))
    assert len({tuple(c[0, 0, :2].tolist()) for c in crops}) > 1  # not one corner for the batch
    assert _crops(x, None, torch.Generator()) is x
    recipe = load_stage0_config(CONFIGS / "stage_0.yaml")["vaes"]
    crop, whole = _phases(recipe["pixels"])
    assert crop is recipe["pixels"] and crop["crop"]
    assert whole["crop"] is None and whole["warmup"] == 0.0
    assert {k: whole[k] for k in recipe["pixels"]["whole"]} == recipe["pixels"]["whole"]
    assert _phases(recipe["mel"]) == [recipe["mel"]]


def test_zeroscope_unet_starts_from_the_sd_unet_in_every_spatial_layer(fresh):
    image, video = fresh.decoders["image"]["unet"], copy.deepcopy(fresh.decoders["video"]["unet"])
    before = {k: v.clone() for k, v in video.state_dict().items()}
    copied = init_from_image_part(video, image)
    sd, after = image.state_dict(), video.state_dict()
    assert copied == len(sd)  # every SD tensor has its place in the video UNet
    assert all(torch.equal(after[k].flatten(), v.flatten()) for k, v in sd.items())
    assert after["down_blocks.0.attentions.0.proj_in.weight"].ndim == 2  # a 1×1 conv's weight as a Linear's
    temporal = [k for k in after if k not in sd]
    assert temporal and all("temp_" in k or k.startswith("transformer_in") for k in temporal)
    assert all(torch.equal(after[k], before[k]) for k in temporal)
    with pytest.raises(ValueError, match="not one spatial layout"):
        init_from_image_part(video, fresh.decoders["audio"]["unet"])


def test_zeroscope_text_encoder_starts_from_the_trained_sd_one(fresh, data):
    settings = {**_settings(1)["text_encoders"], "lr": 0.0}  # no step moves a weight: what is left is the start
    model = copy.deepcopy(fresh)
    sd, video = (model.decoders[m]["text_encoder"] for m in ("image", "video"))
    assert not all(torch.equal(v, video.state_dict()[k]) for k, v in sd.state_dict().items())
    PARTS["text_encoders"](model, data, settings, 0, False)
    after, trained = video.state_dict(), sd.state_dict()
    assert after.keys() == trained.keys() and all(torch.equal(after[k], v) for k, v in trained.items())
    model.decoders["video"]["tokenizer"] = copy.deepcopy(model.decoders["audio"]["tokenizer"])
    with pytest.raises(ValueError, match="caption tokenizers must be one"):
        PARTS["text_encoders"](model, data, settings, 0, False)


def test_cond_noise_moves_each_token_by_about_its_scale_and_zero_draws_nothing():
    captions = torch.nn.functional.normalize(torch.randn(4000, 1, 64), dim=-1)
    gen = torch.Generator().manual_seed(0)
    moved = jitter(captions, 0.4, gen) - captions
    assert abs(moved.norm(dim=-1).mean().item() - 0.4) < 0.01
    assert abs(moved.mean().item()) < 1e-3  # no direction is favoured
    state = gen.get_state()
    assert jitter(captions, 0.0, gen) is captions and torch.equal(gen.get_state(), state)


def test_bf16_precision_autocasts_the_forward_and_keeps_fp32_weights():
    layer = torch.nn.Linear(4, 4)
    seen = []

    def loss(step):
        y = layer(torch.randn(8, 4))
        seen.append(y.dtype)
        return {"loss": y.float().pow(2).mean()}

    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        seen.clear()
        fit(layer.parameters(), loss, {"steps": 2, "lr": 1e-3, "precision": precision}, "probe", False)
        assert seen == [dtype, dtype] and layer.weight.dtype == layer.weight.grad.dtype == torch.float32
    with pytest.raises(ValueError, match="precision 'fp16'"):
        fit(layer.parameters(), loss, {"steps": 1, "lr": 1e-3, "precision": "fp16"}, "probe", False)


def test_stage_0_is_seeded(fresh):
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = copy.deepcopy(fresh)
        config = {"seed": 0, "limit": 4, **{k: v for k, v in _settings(2).items() if k in PARTS}}
        pretrain(model, config, progress=False)
        runs.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


_VISION_PART = """
import hashlib, sys, torch
from pathlib import Path
from train.make_tiny import make_tiny
from train.pretrain.encoders import pretrain_imagebind
from train.pretrain.world_data import WorldData
model = make_tiny(Path(sys.argv[1]), seed=0)
model.requires_grad_(False)
settings = {"steps": 2, "batch": 8, "lr": 1e-3, "weight_decay": 0.01, "attribute_weight": 1.0}
pretrain_imagebind(model, WorldData(model.config, 0, False, limit=4), {"vision": settings}, 0, False, trunks=("vision",))
print(hashlib.sha256(b"".join(p.numpy().tobytes() for p in model.encoder.parameters())).hexdigest())
"""


def test_stage_0_vision_part_does_not_depend_on_the_string_hash_seed(tmp_path):
    # Python draws a new string-hash seed per process; the committed run's vision trunk did not
    # repeat because its attribute heads were built in a set's order (docs/notes/reproducibility.md).
    # Seeds 1 and 3 built them in the two different orders.
    digests = set()
    for hash_seed in ("1", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", _VISION_PART, str(tmp_path / hash_seed)], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        digests.add(out.stdout.split()[-1])
    assert len(digests) == 1


def test_the_recipe_ends_in_the_embedded_checkpoint_s_layout(tmp_path, tiny_dir):
    config = {"seed": 0, "limit": 4, **{k: v for k, v in _settings(2).items() if k in PARTS}}
    counts = {"train": {"image": 8, "video": 8, "audio": 8, "text_to_image": 8, "text_to_video": 8, "text_to_audio": 8}}
    talks = {"train": {"ask": 1, "compare": 1, "transform": 1, "switch": 1}}
    rows = reproduce(tmp_path / "out", tmp_path / "work", 0, config, max_steps=2, counts=counts, progress=False, conversation_counts=talks)
    assert [r["stage"] for r in rows] == ["init", *(f"0 {p}" for p in PARTS), "world", "1", "2", "3"]
    out = tmp_path / "out"
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tiny_dir) for p in tiny_dir.rglob("*") if p.is_file())
    for rel in (f for f in files if f.suffix == ".safetensors"):
        got, want = load_file(str(out / rel)), load_file(str(tiny_dir / rel))
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}, rel
    load_checkpoint(out)
    # stage 3 trained the adapter from zero; the recipe's intermediate checkpoints stay in the work folder
    init_lora = load_file(str(tmp_path / "work" / "stage_2" / "checkpoint" / "lora.safetensors"))
    assert all(not v.any() for k, v in init_lora.items() if "lora_B" in k)
    assert any(v.any() for k, v in load_file(str(out / "lora.safetensors")).items() if "lora_B" in k)


def test_attribute_heads_name_each_medium_s_attributes(fresh):
    data = WorldData(fresh.config, seed=0, progress=False)  # combinations only: nothing is rendered
    combos = data.combos["image"]
    heads = AttributeHeads(combos, width=len(combos))
    index = torch.arange(len(combos))
    assert all(heads.values[k][int(heads.labels[k][i])] == a[k] for i, a in enumerate(combos) for k in a)
    embeds = torch.eye(len(combos))  # one distinct embedding per medium: every label can be fitted
    opt = torch.optim.Adam(heads.parameters(), lr=0.1)
    first = heads(embeds, index).item()
    for _ in range(50):
        opt.zero_grad()
        heads(embeds, index).backward()
        opt.step()
    assert first > 1.0 and heads(embeds, index).item() < 0.05

