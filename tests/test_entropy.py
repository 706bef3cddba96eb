"""Entropy-guided λ: greedy decoding, gradients, the direction of the update, the module."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from reccocktail.cocktail.entropy import (
    EntropyMixModule,
    LoraMixer,
    PromptDataset,
    greedy_tokens,
    left_pad,
    response_entropy,
)
from reccocktail.models.adapters import read_lora
from reccocktail.utils.io import write_json

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _fresh(cfg, embed_scale: float = 1.0):
    """A fresh tiny backbone; `embed_scale` > 1 makes its (tied) logits large enough that the
    model can be confident (at init scale its outputs are near uniform whatever the LoRA does)."""
    from reccocktail.models.backbone import load_backbone

    model = load_backbone(cfg)[0]
    if embed_scale != 1.0:
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(embed_scale)
    return model


def _prompts(n: int = 6, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, 14, (n,), generator=g)
    return [torch.randint(100, 5000, (int(k),), generator=g).tolist() for k in lengths]


def _save(pm, path: Path, seed: int) -> None:
    pm.save_pretrained(str(path))
    write_json(path / "manifest.json", {"kind": "general", "backbone": "tiny_llama",
                                        "init_seed": seed, "data_hash": "x"})


def _peft(cfg, seed: int, embed_scale: float = 1.0, b_std: float = 0.2):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(_fresh(cfg, embed_scale), LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * b_std)
    return pm


@pytest.fixture(scope="module")
def random_adapters(tmp_path_factory, tiny_llama_cfg):
    root = tmp_path_factory.mktemp("random_adapters")
    out = []
    for name, pseed in (("g", 1), ("s", 2)):
        pm = _peft(tiny_llama_cfg, seed=7, b_std=0.2 * pseed)  # one init seed, different B
        _save(pm, root / name, seed=7)
        out.append(read_lora(root / name))
    return out


def test_greedy_tokens_with_left_padding_match_single_uncached_decoding(tiny_llama_cfg):
    model = _fresh(tiny_llama_cfg, embed_scale=10.0)
    prompts = _prompts(3)
    ids, mask = left_pad(prompts, pad_id=0)
    assert mask.sum(1).tolist() == [len(p) for p in prompts]
    batched = greedy_tokens(model, ids, mask, k=4)
    for i, p in enumerate(prompts):
        seq = torch.tensor([p])
        with torch.no_grad():
            for _ in range(4):  # plain decoding: full forward, no cache, no padding
                seq = torch.cat([seq, model(input_ids=seq).logits[:, -1:].argmax(-1)], dim=1)
        assert batched[i].tolist() == seq[0, len(p):].tolist()
    # the teacher-forced entropy of one prompt is the same alone or in a padded batch
    alone = response_entropy(model, *left_pad([prompts[0]], 0), batched[:1])
    probs = [response_entropy(model, *left_pad([p], 0), batched[i:i + 1]) for i, p in enumerate(prompts)]
    assert torch.allclose(response_entropy(model, ids, mask, batched), torch.stack(probs).mean(),
                          atol=1e-4)
    assert alone.item() > 0


@pytest.mark.parametrize("mode", ["ab", "delta"])
@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_entropy_gradient_matches_finite_differences(tiny_llama_cfg, random_adapters, mode,
                                                     granularity):
    model = _fresh(tiny_llama_cfg, embed_scale=10.0).double()
    module = EntropyMixModule(model, random_adapters, mode=mode, granularity=granularity, k=3)
    ids, mask = left_pad(_prompts(3), 0)
    module.mixer.set_weights(module.lambdas().detach())
    tokens = greedy_tokens(model, ids, mask, 3)  # fixed: the greedy tokens are piecewise constant

    def entropy(logits: torch.Tensor) -> torch.Tensor:
        module.mixer.set_weights(logits.softmax(-1))
        return response_entropy(model, ids, mask, tokens)

    logits = (torch.randn(module.lambda_logits.shape, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64) * 0.5).requires_grad_(True)
    (grad,) = torch.autograd.grad(entropy(logits), logits)
    assert grad.abs().max() > 1e-6
    eps = 1e-3  # the backbone's RMSNorm runs in float32 even in a float64 model: no tinier eps
    numeric = grad.clone()  # entries not probed below compare equal
    probe = range(logits.numel()) if logits.numel() <= 4 else (0, 3, 6, 9, 12, 15)
    with torch.no_grad():
        for idx in probe:
            step = torch.zeros_like(logits).view(-1)
            step[idx] = eps
            step = step.view_as(logits)
            numeric.view(-1)[idx] = (entropy(logits + step) - entropy(logits - step)) / (2 * eps)
    scale = grad.abs().max()
    assert torch.allclose(grad, numeric, rtol=2e-3, atol=2e-3 * scale), (grad, numeric)


@pytest.fixture(scope="module")
def confident_and_uniform(tmp_path_factory, tiny_llama_cfg):
    """Two adapters on one (rescaled) backbone: `confident` keeps the backbone's peaked
    distributions on the prompts; `uniform` was trained to maximise their entropy."""
    root = tmp_path_factory.mktemp("cu")
    ids, mask = left_pad(_prompts(), 0)
    confident = _peft(tiny_llama_cfg, seed=3, embed_scale=10.0, b_std=0.01)
    uniform = _peft(tiny_llama_cfg, seed=3, embed_scale=10.0, b_std=0.01)
    opt = torch.optim.Adam([p for p in uniform.parameters() if p.requires_grad], lr=0.1)
    tokens = greedy_tokens(uniform, ids, mask, 3)
    for _ in range(5):
        loss = -response_entropy(uniform, ids, mask, tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        h_conf = response_entropy(confident, ids, mask, greedy_tokens(confident, ids, mask, 3))
        h_unif = response_entropy(uniform, ids, mask, greedy_tokens(uniform, ids, mask, 3))
    assert h_unif > h_conf + 3.0, (float(h_conf), float(h_unif))  # the premise of the test
    _save(confident, root / "confident", seed=3)
    _save(uniform, root / "uniform", seed=3)
    return read_lora(root / "confident"), read_lora(root / "uniform")


@pytest.mark.parametrize("mode,order", [("ab", "cu"), ("delta", "uc")])
def test_minimisation_moves_lambda_toward_the_confident_adapter(tiny_llama_cfg,
                                                                confident_and_uniform, mode, order):
    import lightning as L

    conf, unif = confident_and_uniform
    ads = [conf, unif] if order == "cu" else [unif, conf]
    c = 0 if order == "cu" else 1
    module = EntropyMixModule(_fresh(tiny_llama_cfg, embed_scale=10.0), ads, mode=mode, k=3, lr=0.2)
    ds = PromptDataset(_prompts(), pad_id=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=6, collate_fn=ds.collate)
    trainer = L.Trainer(accelerator="cpu", max_steps=8, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    before = module.mean_entropy(loader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    lam = module.learned_lambdas()
    assert lam[c] > 0.75, (lam, module.curve)
    assert module.curve[-1]["entropy"] < module.curve[0]["entropy"]
    assert before == pytest.approx(module.curve[0]["entropy"], rel=1e-4)  # same prompts, λ=init
    assert module.mean_entropy(loader) < before


def test_module_trains_only_lambda_and_logs_it(tiny_llama_cfg, random_adapters):
    import lightning as L

    model = _fresh(tiny_llama_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = EntropyMixModule(model, random_adapters, granularity="layer", k=2, lr=0.1)
    assert torch.allclose(module.lambdas(), torch.full((8, 2), 0.5))
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["lambda_logits"]
    ds = PromptDataset(_prompts(4), pad_id=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collate)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, loader)
    assert {"mix/entropy", "mix/lambda_g", "mix/lambda_s"} <= set(trainer.callback_metrics)
    assert len(module.curve) == 3 and not module.model.training
    lam = module.learned_lambdas()
    assert isinstance(lam, dict) and len(lam) == 8
    module.mixer.unwrap()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone is untouched
    # init_lambdas sets the start of the softmax
    start = EntropyMixModule(_fresh(tiny_llama_cfg), random_adapters, init_lambdas=[0.8, 0.2])
    assert torch.allclose(start.lambdas(), torch.tensor([[0.8, 0.2]]))
    with pytest.raises(ValueError, match="mix.granularity"):
        EntropyMixModule(_fresh(tiny_llama_cfg), random_adapters, granularity="block")


def test_mixer_refuses_unset_lambda_and_bad_shapes(tiny_llama_cfg, random_adapters):
    model = _fresh(tiny_llama_cfg)
    mixer = LoraMixer(model, random_adapters, "ab")
    with pytest.raises(RuntimeError, match="λ not set"):
        model(input_ids=torch.tensor([[5, 6]]))
    with pytest.raises(ValueError, match="λ of shape"):
        mixer.set_weights(torch.ones(3, 2))
    with pytest.raises(ValueError, match="already wrapped"):
        LoraMixer(model, random_adapters, "ab")


def test_micro_batches_give_the_full_batch_gradient(tiny_llama_cfg, random_adapters):
    """One SGD step (lr 1) leaves logits = -grad: micro-batching (and trimming each micro-batch's
    padding) must not change the gradient of the batch-mean entropy."""
    import lightning as L

    ds = PromptDataset(_prompts(5, seed=1), pad_id=0)
    results = []
    for micro in (None, 2):
        module = EntropyMixModule(_fresh(tiny_llama_cfg, embed_scale=10.0), random_adapters,
                                  mode="delta", granularity="layer", k=2,
                                  micro_batch_size=micro)
        module.configure_optimizers = lambda m=module: torch.optim.SGD([m.lambda_logits], lr=1.0)
        loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=ds.collate)
        trainer = L.Trainer(accelerator="cpu", max_steps=1, max_epochs=-1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        trainer.fit(module, loader)
        results.append((module.lambda_logits.detach().clone(), module.curve[0]["entropy"]))
    (full, h_full), (micro, h_micro) = results
    assert full.abs().max() > 0
    assert torch.allclose(full, micro, rtol=1e-4, atol=1e-7)
    assert abs(h_full - h_micro) < 1e-4


def test_positions_after_the_end_token_are_masked_and_carry_no_gradient(tiny_llama_cfg,
                                                                        random_adapters):
    from reccocktail.cocktail.entropy import answer_positions

    tokens = torch.tensor([[7, 2, 9, 9], [5, 6, 8, 2], [2, 4, 4, 4]])
    keep = answer_positions(tokens, stop_ids=[2])
    assert keep.tolist() == [[True, True, False, False], [True, True, True, True],
                             [True, False, False, False]]
    assert answer_positions(tokens, None).all()
    model = _fresh(tiny_llama_cfg, embed_scale=10.0)
    module = EntropyMixModule(model, random_adapters, k=3)
    ids, mask = left_pad(_prompts(2), 0)
    module.mixer.set_weights(module.lambdas())
    stop = int(greedy_tokens(model, ids, mask, 1)[0, 0])  # prompt 0's first answer token ends it
    tokens = greedy_tokens(model, ids, mask, 3)
    # prompt 0 keeps only its first position: its later positions carry no gradient
    keep = answer_positions(tokens, [stop])
    assert keep[0].tolist() == [True, False, False]
    prompts = _prompts(2)
    expected, count = 0.0, 0
    with torch.no_grad():
        for i, p in enumerate(prompts):  # each kept position alone, no padding
            for j in range(3):
                if keep[i, j]:
                    one = torch.tensor([p + tokens[i, :j].tolist()])
                    expected += float(response_entropy(model, one, torch.ones_like(one),
                                                       tokens[i:i + 1, j:j + 1]))
                    count += 1
    logits = module.lambda_logits.detach().clone().requires_grad_(True)
    module.mixer.set_weights(logits.softmax(-1))
    h = response_entropy(model, ids, mask, tokens, stop_ids=[stop])
    assert h.item() == pytest.approx(expected / count, abs=1e-4)
    assert h.item() != pytest.approx(response_entropy(model, ids, mask, tokens).item(), abs=1e-6)
    assert torch.autograd.grad(h, logits)[0].abs().max() > 0


def test_mixing_runs_in_fp32_in_a_bf16_model_and_matches_the_export(tiny_llama_cfg,
                                                                   random_adapters):
    from reccocktail.cocktail.mix import mix_adapters, mix_factors

    model = _fresh(tiny_llama_cfg).to(torch.bfloat16)
    mixer = LoraMixer(model, random_adapters, "ab")
    lam = torch.tensor([0.3137, 0.6863])
    mixer.set_weights(lam)
    _, exported = mix_adapters(random_adapters, lam.tolist(), "ab")
    for key, layer in zip(mixer.keys, mixer.layers):
        As, Bs = layer.factors()
        assert all(t.dtype == torch.float32 for t in (*As, *Bs))
        A, B, s = mix_factors(As, Bs, layer.scalings, layer.weights.float(), "ab", layer.keep_scaling)
        ea = exported[f"{key}.lora_A.weight"].float()
        eb = exported[f"{key}.lora_B.weight"].float()
        assert (A - ea).abs().max() < 1e-6 and (B - eb).abs().max() < 1e-6
    out = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# -- the objectives besides the paper's entropy -----------------------------------------------

def _h(p):
    import math

    return -sum(x * math.log(x) for x in p if x > 0)


def test_infomax_equals_a_hand_computation():
    from reccocktail.cocktail.entropy import objective_value

    p = [[[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]],
         [[0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]]]
    logp = torch.tensor(p, dtype=torch.float64).log()
    keep = torch.tensor([[True, True], [True, False]])  # prompt 1's answer ended after one token
    # kept (0,0), (0,1), (1,0); position 0's mean over prompts 0 and 1, position 1's is p[0][1]
    mean0 = [(a + b) / 2 for a, b in zip(p[0][0], p[1][0])]
    by_hand = (_h(p[0][0]) + _h(p[0][1]) + _h(p[1][0])) / 3 - 2 / 3 * _h(mean0) - 1 / 3 * _h(p[0][1])
    assert float(objective_value("infomax", logp, keep)) == pytest.approx(by_hand, abs=1e-12)
    # all kept, one position: SHOT's mean_i H(p_i) − H(mean_i p_i)
    one = logp[:, :1]
    shot = (_h(p[0][0]) + _h(p[1][0])) / 2 - _h(mean0)
    assert float(objective_value("infomax", one, torch.ones(2, 1, dtype=torch.bool))) == \
        pytest.approx(shot, abs=1e-12)
    # the same confident answer for every prompt scores worse than diverse confident answers
    same = torch.tensor([[[0.98, 0.01, 0.01]], [[0.98, 0.01, 0.01]]], dtype=torch.float64).log()
    diverse = torch.tensor([[[0.98, 0.01, 0.01]], [[0.01, 0.98, 0.01]]], dtype=torch.float64).log()
    ones = torch.ones(2, 1, dtype=torch.bool)
    assert objective_value("infomax", diverse, ones) < objective_value("infomax", same, ones) - 0.5
    assert objective_value("entropy", diverse, ones) == pytest.approx(
        float(objective_value("entropy", same, ones)))


@pytest.mark.parametrize("objective", ["infomax", "anchored", "normalized"])
def test_objective_gradients_match_finite_differences(tiny_llama_cfg, random_adapters, objective):
    from reccocktail.cocktail.entropy import answer_log_probs, objective_value

    model = _fresh(tiny_llama_cfg, embed_scale=10.0).double()
    module = EntropyMixModule(model, random_adapters, mode="delta", granularity="model", k=3,
                              objective=objective, anchor_beta=0.7)
    ids, mask = left_pad(_prompts(4), 0)
    module.mixer.set_weights(module.lambdas().detach())
    tokens = greedy_tokens(model, ids, mask, 3)  # fixed: the greedy tokens are piecewise constant
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[1, 1:] = False  # an answer that ended early
    refs = module.reference_entropies(ids, mask, tokens).double()
    init = torch.zeros(1, 2, dtype=torch.float64)

    def loss(logits: torch.Tensor) -> torch.Tensor:
        lam = logits.softmax(-1)
        module.mixer.set_weights(lam)
        logp = answer_log_probs(model, ids, mask, tokens)
        return objective_value(objective, logp, keep, lam=lam.mean(0), references=refs,
                               logits=logits, init=init, anchor_beta=0.7)

    logits = torch.tensor([[0.3, -0.4]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(logits), logits)
    assert grad.abs().max() > 1e-4
    eps = 1e-3  # the backbone's RMSNorm runs in float32 even in a float64 model
    numeric = torch.zeros_like(grad)
    with torch.no_grad():
        for idx in range(2):
            step = torch.zeros_like(logits)
            step[0, idx] = eps
            numeric[0, idx] = (loss(logits + step) - loss(logits - step)) / (2 * eps)
    assert torch.allclose(grad, numeric, rtol=2e-3, atol=2e-3 * grad.abs().max()), (grad, numeric)


def _stop_ids(model, ids, mask, k):
    """Stop tokens that end some answers after 1 or 2 tokens and leave others whole."""
    with torch.no_grad():
        tokens = greedy_tokens(model, ids, mask, k)
    return sorted({int(tokens[0, 0]), int(tokens[3, 1]), int(tokens[6, 0])})


@pytest.mark.parametrize("objective", ["entropy", "infomax", "anchored", "normalized"])
def test_loss_and_gradient_do_not_depend_on_the_micro_batch_size(tiny_llama_cfg, random_adapters,
                                                                 objective):
    """With stop ids, micro-batches keep different numbers of positions: the batch's objective
    and λ gradient must still be the one whole-batch mean (and equal the differentiable
    whole-batch objective)."""
    from reccocktail.cocktail.entropy import answer_log_probs, answer_positions, objective_value

    model = _fresh(tiny_llama_cfg, embed_scale=10.0)
    ids, mask = left_pad(_prompts(10, seed=2), 0)
    start = torch.tensor([[0.4, -0.2]])
    results = {}
    # sizes 1, 2 and 10 for the paper's objective and infomax; one uneven split (3+3+3+1) for
    # the two that add only a penalty or reference entropies to the same batch mean
    sizes = (1, 2, 10) if objective in ("entropy", "infomax") else (3, 10)
    for micro in sizes:
        module = EntropyMixModule(model, random_adapters, mode="delta", k=3, micro_batch_size=micro,
                                  objective=objective, anchor_beta=0.5)
        with torch.no_grad():
            module.lambda_logits.copy_(start)
        if micro == sizes[0]:
            module.mixer.set_weights(module.lambdas().detach())
            stop = _stop_ids(model, ids, mask, 3)
        module.stop_ids = stop
        out = module.objective_backward(ids, mask)
        results[micro] = (out, module.lambda_logits.grad.clone())
        if micro == 10:  # the differentiable whole-batch objective, for reference
            module.mixer.set_weights(module.lambdas().detach())
            tokens = greedy_tokens(model, ids, mask, 3)
            keep = answer_positions(tokens, stop)
            refs = module.reference_entropies(ids, mask, tokens)
            logits = start.clone().requires_grad_(True)
            lam = logits.softmax(-1)
            module.mixer.set_weights(lam)
            logp = answer_log_probs(model, ids, mask, tokens)
            ref_loss = objective_value(objective, logp, keep, lam=lam.mean(0), references=refs,
                                       logits=logits, init=torch.zeros(1, 2), anchor_beta=0.5)
            (ref_grad,) = torch.autograd.grad(ref_loss, logits)
            kept = keep.sum(1)
        module.mixer.unwrap()
    assert int(kept.min()) < int(kept.max())  # answers of different lengths
    out10, grad10 = results[10]
    assert grad10.abs().max() > 1e-5
    for micro in sizes[:-1]:
        out, grad = results[micro]
        assert out["loss"] == pytest.approx(out10["loss"], rel=1e-4, abs=1e-6), micro
        assert out["entropy"] == pytest.approx(out10["entropy"], rel=1e-4), micro
        assert torch.allclose(grad, grad10, rtol=1e-3, atol=1e-3 * grad10.abs().max()), micro
    assert out10["loss"] == pytest.approx(float(ref_loss), rel=1e-4, abs=1e-6)
    assert torch.allclose(grad10, ref_grad, rtol=1e-3, atol=1e-3 * ref_grad.abs().max())
    if objective == "entropy":  # the former rule (per-micro-batch means, weighted by prompts)
        ent = -(logp.exp() * logp).sum(-1).detach()
        old = sum(float((ent[lo:lo + 2] * keep[lo:lo + 2]).sum() / keep[lo:lo + 2].sum()) * 2 / 10
                  for lo in range(0, 10, 2))
        assert abs(old - out10["loss"]) > 1e-3  # the test would catch it


def _planted(tiny_llama_cfg):
    """The tiny Llama with one residual coordinate held at a constant (embedding column 0 set,
    no layer writes to it), so a LoRA on the LM head that reads it adds the same logit boost
    at every prompt and position; its (tied) logits sharpened (embeddings x10)."""
    model = _fresh(tiny_llama_cfg, embed_scale=10.0)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 0] = emb[:, 1:].std()
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
    return model


def _head_adapter(name: str, token: int, boost: float):
    """A rank-1 LoRA on the LM head: + boost · h_0 on `token` (h_0 > 0 everywhere, see
    `_planted`); boost 0 leaves the backbone's own answers."""
    from reccocktail.models.adapters import LoraAdapter

    key = "base_model.model.lm_head"
    a = torch.zeros(1, 64)
    a[0, 0] = 1.0
    b = torch.zeros(49152, 1)
    b[token, 0] = boost
    return LoraAdapter(config={"r": 1, "lora_alpha": 1, "target_modules": ["lm_head"]},
                       A={key: a}, B={key: b}, name=name)


def test_entropy_follows_the_confident_wrong_adapter_and_infomax_the_right_one(tiny_llama_cfg):
    """Adapter `wrong` answers the same token for every prompt, confidently; adapter `right`
    gives each prompt its own answer (the backbone's), less confidently. Entropy minimisation
    moves λ to `wrong`; information maximisation to `right`."""
    from reccocktail.cocktail.entropy import greedy_decode, position_entropy

    model = _planted(tiny_llama_cfg)
    wrong_token = 1234
    adapters = [_head_adapter("wrong", wrong_token, 20.0), _head_adapter("right", wrong_token, 0.0)]
    ids, mask = left_pad(_prompts(6), 0)
    chosen = {}
    for objective in ("entropy", "infomax"):
        module = EntropyMixModule(model, adapters, mode="delta", k=1, objective=objective)
        if objective == "entropy":  # the premise: what each adapter alone answers
            with torch.no_grad():
                module.mixer.set_weights(torch.tensor([1.0, 0.0]))
                w_tok, w_logp = greedy_decode(model, ids, mask, 1)
                module.mixer.set_weights(torch.tensor([0.0, 1.0]))
                r_tok, r_logp = greedy_decode(model, ids, mask, 1)
            assert set(w_tok[:, 0].tolist()) == {wrong_token}
            assert len(set(r_tok[:, 0].tolist())) == 6 and wrong_token not in r_tok
            assert position_entropy(w_logp).mean() + 2.0 < position_entropy(r_logp).mean()
        opt = torch.optim.Adam([module.lambda_logits], lr=0.3)
        for _ in range(8):
            opt.zero_grad()
            module.objective_backward(ids, mask)
            opt.step()
        chosen[objective] = module.learned_lambdas()
        module.mixer.unwrap()
    assert chosen["entropy"][0] > 0.8, chosen
    assert chosen["infomax"][1] > 0.8, chosen
