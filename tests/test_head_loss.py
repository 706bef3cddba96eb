"""The chunked LM-head cross-entropy: the same loss and gradients as the plain path."""

from __future__ import annotations

import pytest
import torch
from test_tuning import make_items, make_samples

from reccocktail.data.prompts import PromptBuilder
from reccocktail.models.datamodule import collate
from reccocktail.models.head_loss import linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_loss_and_gradients_match_the_plain_cross_entropy(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(29, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 29, (11,), generator=g)
    ref = torch.nn.functional.cross_entropy(h @ w.T, t)
    ref.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = linear_cross_entropy(h, w, t, chunk=chunk)
    (got * 3.0).backward()  # an upstream scale (accumulation, AMP) reaches both gradients
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(h.grad, 3.0 * gh)
    torch.testing.assert_close(w.grad, 3.0 * gw)


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_summed_loss_and_its_gradients_match_the_plain_sum(chunk):
    """reduction="sum" (the token-count normalisation divides later): the loss and the
    in-forward gradients are the plain summed cross-entropy's, upstream scale included."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(17, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 17, (9,), generator=g)
    ref = torch.nn.functional.cross_entropy(h @ w.T, t, reduction="sum")
    (ref / 7.0).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = linear_cross_entropy(h, w, t, chunk=chunk, reduction="sum")
    (got / 7.0).backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(h.grad, gh)
    torch.testing.assert_close(w.grad, gw)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, t, reduction="none")


def test_a_frozen_head_gets_no_gradient():
    h = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(9, 4)
    linear_cross_entropy(h, w, torch.tensor([0, 8, 3, 3, 1])).backward()
    assert w.grad is None and h.grad is not None and h.grad.abs().sum() > 0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected hidden"):
        linear_cross_entropy(torch.randn(2, 3, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="no positions"):
        linear_cross_entropy(torch.randn(0, 4), torch.randn(5, 4), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("which", ["tiny_llama_cfg", "tiny_qwen2_cfg"])
def test_response_loss_fused_equals_unfused_with_lora_gradients(which, request, tokenizer):
    """The training loss through the decoder + chunked head equals the model's own forward,
    and so do the LoRA gradients (the ones training uses)."""
    from reccocktail.models.tuning import _plain_head, build_peft_model, response_loss

    model = build_peft_model(request.getfixturevalue(which), init_seed=0)
    assert _plain_head(model) is not None  # the fused path is taken, not the fall-back
    items = make_items()
    batch = collate([PromptBuilder(tokenizer, items).example(s.history, s.candidates, s.target)
                     for s in make_samples(items, 3, 8)], tokenizer.pad_token_id)
    model.train()
    grads, losses = [], []
    for fused in (True, False):
        model.zero_grad()
        torch.manual_seed(0)  # the same LoRA dropout masks
        loss = response_loss(model, **batch, fused=fused)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)
