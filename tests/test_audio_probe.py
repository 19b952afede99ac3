"""The linear probe that says where a sound's attributes are lost: it reads what features hold, and
not what they do not."""
import numpy as np

from benchmarks import audio_probe
from train import synthetic


def test_the_probe_reads_an_attribute_the_features_hold_and_not_one_they_lack():
    rng = np.random.default_rng(0)
    labels = rng.integers(12, size=300)
    held = rng.normal(size=(300, 16))
    held[np.arange(300), labels] += 5.0  # one direction per class
    predicted = audio_probe.probe(held[:200], labels[:200], held[200:], 12)
    assert np.mean(predicted == labels[200:]) > 0.9
    blind = audio_probe.probe(held[:200], rng.permutation(labels[:200]), held[200:], 12)
    assert np.mean(blind == labels[200:]) < 0.3


def test_every_link_gives_one_row_per_sound(tiny_model):
    combos = synthetic.combinations("audio")[:3]
    links = audio_probe.link_features(tiny_model, combos)
    width = tiny_model.config["imagebind"]
    assert set(links) == {"log_mel", "imagebind", "projected"}
    assert links["log_mel"].shape == (3, width["audio"]["num_mel_bins"])
    assert links["imagebind"].shape == (3, width["out_embed_dim"])
    assert links["projected"].shape == (3, tiny_model.config["llm"]["hidden_size"])
