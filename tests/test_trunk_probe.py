"""The linear probe that says where a medium's attributes are lost: it reads what features hold, and
not what they do not."""
import numpy as np

from benchmarks import trunk_probe
from runtime.preprocess import pitch_shape
from train import synthetic


def test_the_probe_reads_an_attribute_the_features_hold_and_not_one_they_lack():
    rng = np.random.default_rng(0)
    labels = rng.integers(12, size=300)
    held = rng.normal(size=(300, 16))
    held[np.arange(300), labels] += 5.0  # one direction per class
    predicted = trunk_probe.probe(held[:200], labels[:200], held[200:], 12)
    assert np.mean(predicted == labels[200:]) > 0.9
    blind = trunk_probe.probe(held[:200], rng.permutation(labels[:200]), held[200:], 12)
    assert np.mean(blind == labels[200:]) < 0.3


def test_every_link_gives_one_row_per_medium(tiny_model):
    width = tiny_model.config["imagebind"]
    sounds = trunk_probe.world_features(tiny_model, "audio", synthetic.combinations("audio")[:3])
    pitch = sum(pitch_shape(width["audio"]))
    assert set(sounds) == {"log_mel", "imagebind", "projected"} | ({"pitch_rows"} if pitch else set())
    assert sounds["log_mel"].shape == (3, width["audio"]["num_mel_bins"])
    assert not pitch or sounds["pitch_rows"].shape == (3, pitch)
    pictures = trunk_probe.world_features(tiny_model, "image", synthetic.combinations("image")[:2])
    assert set(pictures) == {"imagebind", "projected"}
    for links, n in ((sounds, 3), (pictures, 2)):
        assert links["imagebind"].shape == (n, width["out_embed_dim"])
        assert links["projected"].shape == (n, tiny_model.config["llm"]["hidden_size"])


def test_the_foreign_set_gives_each_file_its_combination():
    paths, combos = trunk_probe.foreign_set("image", per_modality=4)
    assert len(paths) == len(combos) == 4 and all(p.suffix in (".png", ".jpg") for p in paths)
    held = synthetic.combination_splits(0)["image"]["heldout"]
    assert all(a in held for a in combos)
