import numpy as np
import pytest
import torch

from reallm_cli.train.augment import (
    AugmentError,
    SpecAugmentConfig,
    add_noise,
    random_speed_factor,
    snr_db,
    spec_augment,
    spec_augment_batch,
    speed_perturb,
)

SR = 16000


def test_spec_masks_have_the_asked_sizes_and_only_mask_their_region():
    feats = torch.randn(300, 80) + 5.0  # nothing is 0 before masking
    cfg = SpecAugmentConfig(n_freq_masks=1, min_freq_width=12, max_freq_width=12,
                            n_time_masks=1, min_time_width_frames=30, max_time_width_frames=30)
    out, masks = spec_augment(feats, cfg, np.random.default_rng(0))
    (fm,), (tm,) = [m for m in masks if m.axis == "freq"], [m for m in masks if m.axis == "time"]
    assert fm.width == 12 and tm.width == 30
    zero = out == 0.0
    assert zero.all(dim=0).sum() == 12  # fully masked frequency columns
    assert zero.all(dim=1).sum() == 30  # fully masked time rows
    assert zero[tm.start : tm.start + 30].all() and zero[:, fm.start : fm.start + 12].all()
    expected_zeros = 30 * 80 + 12 * 300 - 30 * 12
    assert int(zero.sum()) == expected_zeros
    untouched = ~zero
    assert torch.equal(out[untouched], feats[untouched])
    assert (feats != 0).all()  # the input itself was not masked in place


def test_spec_augment_widths_are_bounded_and_seeded():
    feats = torch.randn(100, 80)
    cfg = SpecAugmentConfig(n_freq_masks=3, max_freq_width=10, n_time_masks=3, max_time_width_frames=50, max_time_share=0.2)
    widths_t, widths_f = [], []
    for seed in range(50):
        _, masks = spec_augment(feats, cfg, np.random.default_rng(seed))
        widths_t += [m.width for m in masks if m.axis == "time"]
        widths_f += [m.width for m in masks if m.axis == "freq"]
        assert all(0 <= m.start and m.start + m.width <= (100 if m.axis == "time" else 80) for m in masks)
    assert max(widths_t) == 20  # capped by 20% of 100 frames, not by 50
    assert max(widths_f) == 10 and min(widths_f) == 0
    a, _ = spec_augment(feats, cfg, np.random.default_rng(3))
    b, _ = spec_augment(feats, cfg, np.random.default_rng(3))
    assert torch.equal(a, b)


def test_spec_augment_batch_keeps_padding_untouched():
    feats = torch.randn(2, 50, 80) + 5.0
    lengths = torch.tensor([50, 20])
    cfg = SpecAugmentConfig(n_freq_masks=0, n_time_masks=2, min_time_width_frames=4, max_time_width_frames=4, max_time_share=1.0)
    out = spec_augment_batch(feats, lengths, cfg, np.random.default_rng(0))
    assert torch.equal(out[1, 20:], feats[1, 20:])
    assert (out[1, :20] == 0).all(dim=1).sum() >= 4


def _peak_hz(wave, sr=SR):
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.argmax(spec) * sr / len(wave)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_changes_length_and_pitch_by_the_factor(factor):
    t = np.arange(SR) / SR
    wave = (0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    out = speed_perturb(wave, factor)
    assert out.dtype == np.float32
    assert abs(len(out) - SR / factor) <= 2
    assert _peak_hz(out) == pytest.approx(500 * factor, abs=3)
    with pytest.raises(AugmentError):
        speed_perturb(wave, 3.0)


def test_random_speed_factor_range():
    rng = np.random.default_rng(0)
    xs = [random_speed_factor(rng) for _ in range(200)]
    assert 0.9 <= min(xs) and max(xs) <= 1.1 and max(xs) - min(xs) > 0.15
    assert {random_speed_factor(rng, choices=(0.9, 1.0, 1.1)) for _ in range(50)} == {0.9, 1.0, 1.1}


@pytest.mark.parametrize("target", [0.0, 10.0, 20.0])
def test_additive_noise_has_the_asked_snr(target):
    rng = np.random.default_rng(1)
    t = np.arange(SR) / SR
    wave = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    noisy = add_noise(wave, target, rng)  # white noise
    assert snr_db(wave, noisy) == pytest.approx(target, abs=0.01)
    babble = rng.standard_normal(SR // 3) * 0.01  # shorter than the speech: looped
    noisy2 = add_noise(wave, target, rng, noise=babble)
    assert len(noisy2) == len(wave)
    assert snr_db(wave, noisy2) == pytest.approx(target, abs=0.01)
    with pytest.raises(AugmentError, match="silent"):
        add_noise(wave, target, rng, noise=np.zeros(100))
