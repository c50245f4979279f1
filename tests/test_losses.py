"""The training losses and the attention-probability capture, on hand-made tensors and the tiny UNet."""

from __future__ import annotations

import pytest
import torch

from facediffuser.io.tiny import TinyConfig, tiny_unet
from facediffuser.training.attention import LOCALIZATION_LAYERS, AttentionStore, install_attention_capture
from facediffuser.training.losses import (
    attention_grid,
    denoising_loss,
    head_loss_weights,
    localization_loss,
    min_snr_weights,
    subject_union_masks,
)


def test_denoising_loss_plain_and_masked():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(pred)
    assert denoising_loss(pred, target).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # Masked positions count as zeros in the mean: (1 + 16) / 4.
    assert denoising_loss(pred, target, mask).item() == pytest.approx(17 / 4)
    assert denoising_loss(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_min_snr_weights_and_weighted_loss():
    snr = torch.tensor([0.5, 5.0, 20.0])
    # min(SNR, 5) / SNR for noise targets: 1 below gamma, gamma / SNR above it.
    assert torch.allclose(min_snr_weights(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.25]))
    # min(SNR, 5) / (SNR + 1) for velocity targets.
    assert torch.allclose(min_snr_weights(snr, 5.0, "v_prediction"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 21]))
    with pytest.raises(ValueError, match="sample"):
        min_snr_weights(snr, 5.0, "sample")
    pred = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])  # per-sample MSE 1 and 9
    target = torch.zeros_like(pred)
    assert denoising_loss(pred, target, weights=torch.tensor([1.0, 1.0])).item() == pytest.approx(5.0)
    assert denoising_loss(pred, target, weights=torch.tensor([2.0, 0.5])).item() == pytest.approx((2 + 4.5) / 2)


def test_subject_union_masks():
    masks = torch.zeros(3, 4, 4)
    masks[0, :2, :2] = 1  # image 0, person A
    masks[1, :2, :] = 1  # image 0, person B (overlaps A)
    masks[2, 3, 3] = 1  # image 2
    positions = torch.tensor([[0, 5], [0, 9], [2, 3]])
    union = subject_union_masks(masks, positions, batch_size=3, size=(2, 2))
    assert union.shape == (3, 1, 2, 2)
    assert union[0, 0].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert union[1].eq(1).all()  # no person: full loss
    assert union[2, 0].tolist() == [[0.0, 0.0], [0.0, 0.25]]  # area: a quarter of that cell
    empty = subject_union_masks(torch.zeros(0, 4, 4), torch.zeros(0, 2, dtype=torch.long), 2, (2, 2))
    assert empty.eq(1).all()


def test_head_loss_weights_and_the_weighted_loss():
    heads = torch.zeros(2, 4, 4)
    heads[0, :2, :2] = 1  # image 0's person: a head filling the top-left latent cell
    heads[1, 3, 3] = 1  # image 2's person: a quarter of the bottom-right cell
    positions = torch.tensor([[0, 5], [2, 3]])
    w = head_loss_weights(heads, positions, batch_size=3, size=(2, 2), weight=4.0)
    assert w.shape == (3, 1, 2, 2)
    assert w[0, 0].tolist() == [[5.0, 1.0], [1.0, 1.0]]
    assert w[1].eq(1).all()  # no person: the plain loss
    assert w[2, 0].tolist() == [[1.0, 1.0], [1.0, 2.0]]  # 1 + 4 * a quarter
    none = head_loss_weights(torch.zeros(0, 4, 4), torch.zeros(0, 2, dtype=torch.long), 2, (2, 2), 4.0)
    assert none.eq(1).all()

    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(pred)
    pixel = torch.tensor([[[[5.0, 1.0], [1.0, 1.0]]]])
    assert denoising_loss(pred, target, pixel_weights=pixel).item() == pytest.approx((5 + 4 + 9 + 16) / 4)
    assert (
        denoising_loss(pred, target, pixel_weights=torch.ones_like(pixel)).item() == denoising_loss(pred, target).item()
    )
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert denoising_loss(pred, target, mask, pixel_weights=pixel).item() == pytest.approx((5 + 16) / 4)
    batch = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])  # per-sample MSE 1 and 9
    pixels = torch.stack([pixel[0], torch.ones(1, 2, 2)])
    expected = (2.0 * (5 + 3) / 4 + 0.5 * 9) / 2  # each sample's weighted mean, then the timestep weights
    assert denoising_loss(
        batch, torch.zeros_like(batch), weights=torch.tensor([2.0, 0.5]), pixel_weights=pixels
    ).item() == (pytest.approx(expected))


def test_attention_grid():
    assert attention_grid(64, (8, 8)) == (8, 8)
    assert attention_grid(16, (8, 8)) == (4, 4)
    assert attention_grid(9, (12, 9)) == (3, 3)  # 12x9 -> 6x5 -> 3x3 (each halving rounds up)
    with pytest.raises(ValueError):
        attention_grid(7, (8, 8))


def test_localization_loss_on_hand_made_maps():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1  # the person fills the top-left quarter
    positions = torch.tensor([[0, 2]])  # image 0, token 2
    probs = torch.zeros(1, 2, 16, 5)  # (B, heads, HW, L)
    probs[..., 0] = 1.0  # every pixel attends to token 0 ...
    on_person = mask.flatten().bool()
    probs[0, :, on_person, 0] = 0.0
    probs[0, :, on_person, 2] = 1.0  # ... except the person's pixels, which attend to the person's token
    assert localization_loss([probs], mask, positions, (4, 4)).item() == pytest.approx(-1.0)
    inverted = probs.clone()
    inverted[..., 2] = 1.0 - probs[..., 2]
    assert localization_loss([inverted], mask, positions, (4, 4)).item() == pytest.approx(1.0)
    uniform = torch.full((1, 2, 16, 5), 0.2)
    both = localization_loss([probs, uniform], mask, positions, (4, 4))
    assert both.item() == pytest.approx(-0.5)  # averaged over layers
    # A coarser layer (2x2): the mask is area-resized to it.
    coarse = torch.zeros(1, 1, 4, 5)
    coarse[0, 0, 0, 2] = 1.0
    assert localization_loss([coarse], mask, positions, (4, 4)).item() == pytest.approx(-1.0)
    none = localization_loss([probs], torch.zeros(0, 4, 4), torch.zeros(0, 2, dtype=torch.long), (4, 4))
    assert none.item() == 0.0


def test_capture_processor_matches_diffusers_and_records_the_named_layers():
    torch.manual_seed(0)
    unet = tiny_unet(TinyConfig()).eval()
    sample = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 77, 16, requires_grad=True)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        reference = unet(sample, t, encoder_hidden_states=context).sample
    store = AttentionStore()
    captured = install_attention_capture(unet, store)
    assert {name.split(".attentions.")[0] for name in captured} == set(LOCALIZATION_LAYERS)
    out = unet(sample, t, encoder_hidden_states=context).sample
    assert torch.allclose(out, reference, atol=1e-5)
    assert len(store.maps()) == len(captured)
    for name, probs in store.probs.items():
        assert probs.shape[0] == 2 and probs.shape[-1] == 77, name
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5)
    shapes = {name.split(".attentions.")[0]: tuple(p.shape[2:]) for name, p in store.probs.items()}
    assert shapes["down_blocks.1"] == (16, 77) and shapes["mid_block"] == (1, 77)
    # The maps carry gradients back to the text condition (the loss trains the fuser through them).
    loss = localization_loss(store.maps(), torch.ones(1, 8, 8), torch.tensor([[0, 3]]), (8, 8))
    loss.backward()
    assert context.grad is not None and context.grad[0, 3].abs().sum() > 0
    first = dict(store.probs)
    unet(sample, t, encoder_hidden_states=context)
    assert all(store.probs[k] is first[k] for k in first)  # first write wins until reset
    store.reset()
    assert store.maps() == []
    with pytest.raises(ValueError, match="no cross-attention"):
        install_attention_capture(unet, store, layers=("down_blocks.3",))
