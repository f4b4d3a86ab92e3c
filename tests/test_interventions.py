"""Interventions on tiny models with planted ground truth and library oracles."""

from __future__ import annotations

import pytest
import torch

from vkvtrain import Prompt
from vkvtrain.errors import RecipeError
from vkvtrain.interventions import AttentionBlocking, KeyArtifactSuppression, LateLoRA, LearnedPrefix, Quantization
from vkvtrain.interventions.blocking import block_mask
from vkvtrain.interventions.key_artifacts import agnostic_fraction, shared_key_energy
from vkvtrain.models.registry import adapter_for_family, families
from vkvtrain.probes.functional import input_agnosticism


def _images(make_image, n: int, size: int = 32) -> list:
    return [make_image(size, size, seed=s) for s in range(n)]


# ---------------------------------------------------------------- learned prefix
def test_prefix_equals_real_text_prefix_positions_included(tiny_mlm, family, make_image) -> None:
    """Vectors initialised from a text's embeddings must reproduce the model run on that text as prefix:
    placement, and each family's own position logic (Qwen2.5-VL's M-RoPE) are those of real text."""
    mlm = tiny_mlm(family)
    text = "red cat on"
    n = len(mlm.tokenizer.encode(text, add_special_tokens=False))
    image = make_image(32, 32, seed=1)
    with torch.no_grad():
        reference = mlm.model(**mlm.encode([Prompt(images=[image], text="q", prefix=text)]).inputs).logits
        prefix = LearnedPrefix(num_tokens=n, init_text=text)
        prefix.attach(mlm)
        batch = mlm.encode([Prompt(images=[image], text="q", prefix=prefix.prompt_prefix())])
        ids = batch.input_ids[0]
        first_image = int(batch.spans[0][0].start)
        slots = (ids == prefix.placeholder_id).nonzero().flatten().tolist()
        assert slots == list(range(slots[0], slots[0] + n))  # one contiguous run of n slots...
        assert 1 <= first_image - slots[-1] <= 2  # ...right before the image (Qwen2.5-VL: + <|vision_start|>)
        swapped = mlm.model(**batch.inputs).logits
        prefix.detach()
    assert swapped.shape == reference.shape
    torch.testing.assert_close(swapped, reference, rtol=1e-4, atol=1e-4)


def test_prefix_trains_only_its_vectors(tiny_mlm, make_image) -> None:
    mlm = tiny_mlm("qwen2_5_vl")
    mlm.model.requires_grad_(False)
    before = {k: v.clone() for k, v in mlm.model.state_dict().items()}
    prefix = LearnedPrefix(num_tokens=3, seed=1)
    prefix.attach(mlm)
    start = prefix.vectors.detach().clone()
    optimizer = torch.optim.SGD(prefix.parameters(), lr=0.5)
    batch = mlm.encode([Prompt(images=_images(make_image, 1), text="q", prefix=prefix.prompt_prefix(), answer="yes")])
    for _ in range(2):
        optimizer.zero_grad()
        mlm.model(**batch.inputs).loss.backward()
        optimizer.step()
    assert not torch.equal(prefix.vectors, start)
    after = mlm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert list(prefix.trainable_state_dict()) == ["vectors"]


# ---------------------------------------------------------------- key-artifact loss
def test_shared_energy_is_unbiased_against_planted_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 8, generator=gen)
    keys = mu + torch.randn(4000, 5, 8, generator=gen) * 2.0  # many images: sample mean -> mu
    shared, total = shared_key_energy(keys[:3])  # 3 images: plain ||mean||^2 would be biased by 4*8/3
    small = torch.stack([shared_key_energy(keys[i : i + 3])[0] for i in range(0, 3000, 3)]).mean(0)
    torch.testing.assert_close(small, mu.pow(2).sum(-1), rtol=0.1, atol=0.6)
    assert agnostic_fraction(torch.ones(3, 5, 8)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        shared_key_energy(keys[:1])


def test_suppression_lowers_planted_agnosticism(tiny_mlm, make_image) -> None:
    """Plant a constant in layer 3's key bias (an input-agnostic key component); LoRA on that layer's k_proj
    trained with the suppression loss alone must lower the layer's input-agnosticism score (probes metric)."""
    mlm = tiny_mlm("llava_onevision")
    layer = 3
    k_proj = mlm.decoder_layers()[layer].self_attn.k_proj
    with torch.no_grad():
        k_proj.bias += 3.0 * torch.randn(k_proj.bias.shape, generator=torch.Generator().manual_seed(0))
    lora = LateLoRA(layers=[layer], rank=4, alpha=8, projections=["k"])
    loss_iv = KeyArtifactSuppression(layers=[layer], key_kind="keys_pre_rope")
    mlm.model.requires_grad_(False)
    lora.attach(mlm)
    loss_iv.attach(mlm)
    batch = mlm.encode([Prompt(images=[img], text="q") for img in _images(make_image, 4)])

    def score() -> float:
        with torch.no_grad(), mlm.capture([layer]) as kv:
            mlm.model(**batch.inputs)
        keys = torch.stack([kv.image(layer, b, 0).keys_pre_rope for b in range(4)])
        return float(input_agnosticism(keys).mean())

    start = score()
    optimizer = torch.optim.Adam(lora.extra_trainable_parameters(), lr=0.05)
    for _ in range(15):
        optimizer.zero_grad()
        with mlm.capture(loss_iv.grad_layers(), grad=True) as kv:
            mlm.model(**batch.inputs)
        loss_iv.loss(kv, batch).backward()
        optimizer.step()
    end = score()
    assert start > 0.8  # the plant dominates
    assert end < start - 0.2


# ---------------------------------------------------------------- LoRA
def test_lora_only_named_lm_layers_and_plain_peft_loads_it(tiny_mlm, make_image, tmp_path) -> None:
    from peft import PeftModel

    mlm = tiny_mlm("llava_onevision")
    lora = LateLoRA(layers=[-1, 2], rank=2, projections=["q", "v"])
    lora.attach(mlm)
    wrapped = sorted(n.rsplit(".lora_A", 1)[0] for n, _ in mlm.model.named_modules() if n.endswith("lora_A"))
    assert wrapped == [f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in (2, 3) for p in ("q", "v")]
    trainable = [n for n, p in mlm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model.layers." in n for n in trainable)
    before = {k: v.clone() for k, v in mlm.model.state_dict().items()}
    optimizer = torch.optim.SGD(lora.extra_trainable_parameters(), lr=0.5)
    for _ in range(2):  # lora_B starts at zero: the second step moves lora_A too
        optimizer.zero_grad()
        mlm.model(**mlm.encode([Prompt(images=_images(make_image, 1), text="q", answer="yes")]).inputs).loss.backward()
        optimizer.step()
    changed = {k for k, v in mlm.model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {f"model.language_model.layers.{i}.self_attn.{p}_proj.lora_{ab}.default.weight"
                       for i in (2, 3) for p in ("q", "v") for ab in ("A", "B")}
    with torch.no_grad():  # make the adapter clearly non-trivial
        for p in lora.extra_trainable_parameters():
            p.normal_(0, 0.3)
    batch = mlm.encode([Prompt(images=_images(make_image, 1), text="q")])
    with torch.no_grad():
        ours = mlm.model(**batch.inputs).logits
    folder = lora.save_adapter(tmp_path / "adapter")
    assert (folder / "adapter_model.safetensors").exists()
    fresh = tiny_mlm("llava_onevision")
    with torch.no_grad():
        plain = fresh.model(**batch.inputs).logits
        loaded = PeftModel.from_pretrained(fresh.model, str(folder))(**batch.inputs).logits
    assert not torch.allclose(plain, ours, atol=1e-4)
    torch.testing.assert_close(loaded, ours, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- attention blocking
def test_block_mask_kinds_agree() -> None:
    blocked = torch.zeros(2, 6, dtype=torch.bool)
    blocked[0, 2] = blocked[1, 4] = True
    as_bool = block_mask(None, blocked, q_len=6, past_len=0)
    causal = torch.ones(6, 6).tril().bool()[None, None].expand(2, 1, 6, 6)
    assert torch.equal(block_mask(causal.clone(), blocked, 6, 0), as_bool)
    additive = torch.zeros(2, 1, 6, 6).masked_fill(~causal, float("-inf"))
    assert torch.equal(block_mask(additive, blocked, 6, 0) == 0, as_bool)
    assert not as_bool[0, 0, 3:, 2].any() and as_bool[0, 0, 2, 2]  # later queries blocked, self kept
    decode = block_mask(None, torch.nn.functional.pad(blocked, (0, 1)), q_len=1, past_len=6)
    assert decode.shape == (2, 1, 1, 7) and not decode[0, 0, 0, 2] and decode[0, 0, 0, 3]


def test_blocking_removes_attention_to_exactly_flagged_positions(tiny_mlm, make_image) -> None:
    mlm = tiny_mlm("qwen2_5_vl", attn_implementation="eager")
    batch = mlm.encode([Prompt(images=[img], text="what is it") for img in _images(make_image, 2)])
    flagged, layer = [0, 3, 5], 2
    blocking = AttentionBlocking(layers=[layer], positions=flagged)
    blocking.attach(mlm)
    with torch.no_grad():
        attn = mlm.model(**batch.inputs, output_attentions=True).attentions
    for b in range(2):
        start = batch.spans[b][0].start
        cols = [start + p for p in flagged]
        weights = attn[layer][b]  # (heads, Q, K)
        rows = torch.arange(weights.shape[1])
        for col in cols:
            others = rows[(rows != col) & (rows > col)]
            assert torch.all(weights[:, others, col] == 0)  # every head, every later query
        kept = [c for c in range(start, batch.spans[b][0].stop) if c not in cols]
        assert torch.all(weights[:, -1, kept] > 0)  # nothing else is blocked
        assert torch.all(attn[layer - 1][b][:, -1, cols] > 0)  # other layers untouched
    blocking.detach()


def test_blocking_sdpa_matches_eager(tiny_mlm, make_image) -> None:
    outs = []
    for impl in ("eager", "sdpa"):
        mlm = tiny_mlm("llava_next", attn_implementation=impl)
        batch = mlm.encode([Prompt(images=[img], text="q") for img in _images(make_image, 2)])
        blocking = AttentionBlocking(layers=[1, 3], positions=[1, 2])
        blocking.attach(mlm)
        with torch.no_grad():
            outs.append(mlm.model(**batch.inputs).logits)
        blocking.detach()
        with torch.no_grad():
            plain = mlm.model(**batch.inputs).logits
        assert not torch.allclose(plain, outs[-1], atol=1e-5)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_blocking_calibration_finds_planted_positions(tiny_mlm, make_image) -> None:
    mlm = tiny_mlm("llava_onevision")
    layer, planted = 3, [2, 7]
    batch = mlm.encode([Prompt(images=[img], text="q") for img in _images(make_image, 4)])
    k_proj = mlm.decoder_layers()[layer].self_attn.k_proj

    def plant(_m, _a, out):  # a large constant key at two image positions of every prompt
        out = out.clone()
        for row in batch.spans:
            for p in planted:
                out[row[0].batch, row[0].start + p] += 50.0
        return out

    handle = k_proj.register_forward_hook(plant)
    blocking = AttentionBlocking(layers=[layer], top_k=2)
    blocking.attach(mlm)
    assert blocking.calibrate(mlm, [batch]) == {layer: planted}
    # the control: as many random positions, seeded, drawn from the whole span
    n_tokens = batch.spans[0][0].stop - batch.spans[0][0].start
    draws = []
    for seed in (0, 0, 1):
        control = AttentionBlocking(layers=[layer, layer - 1], top_k=2, selection="random", seed=seed)
        control.attach(mlm)
        draws.append(control.calibrate(mlm, [batch]))
        control.detach()
    assert draws[0] == draws[1] != draws[2]
    for picked in draws[0].values():
        assert len(set(picked)) == 2 and all(0 <= p < n_tokens for p in picked)
    assert draws[0][layer] != draws[0][layer - 1] or draws[2][layer] != draws[2][layer - 1]
    assert control.init_args()["selection"] == "random"
    with pytest.raises(RecipeError, match="selection 'best' is unknown"):
        AttentionBlocking(layers=[1], selection="best")  # type: ignore[arg-type]
    handle.remove()


# ---------------------------------------------------------------- quantization
@pytest.mark.parametrize("family", families())
def test_quantization_skips_the_family_vision_side(family: str) -> None:
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional extra (vkvtrain[quant])")
    vision = adapter_for_family(family).vision_modules
    eight = Quantization(bits=8).to_bnb_config(vision)
    assert eight.load_in_8bit and eight.llm_int8_skip_modules == [*vision, "lm_head"]
    four = Quantization(bits=4, compute_dtype="float32").to_bnb_config(vision)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.float32
    own = Quantization(bits=8, skip_modules=["model.visual"]).to_bnb_config(vision)
    assert own.llm_int8_skip_modules == ["model.visual"]  # a recipe's own list wins
    with pytest.raises(RecipeError, match="bits must be 4 or 8"):
        Quantization(bits=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_load_forward_and_lora_step_on_cpu(tiny_mlm, make_image, bits) -> None:
    """8-bit, and nf4 on the bias-free Llama LM of LLaVA-NeXT (CPU nf4 kernels fail on biased linears)."""
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional extra (vkvtrain[quant])")

    layer_type = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    mlm = tiny_mlm("llava_next", quantization=Quantization(bits=bits, compute_dtype="float32"))
    lm_linear = mlm.decoder_layers()[0].self_attn.q_proj
    assert isinstance(lm_linear, layer_type)
    assert not any(isinstance(m, layer_type) for m in mlm.model.model.vision_tower.modules())
    assert not any(isinstance(m, layer_type) for m in mlm.model.model.multi_modal_projector.modules())
    lora = LateLoRA(layers=[-1], rank=2)
    mlm.model.requires_grad_(False)
    lora.attach(mlm)
    batch = mlm.encode([Prompt(images=_images(make_image, 1), text="q", answer="yes")])
    loss = mlm.model(**batch.inputs).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.extra_trainable_parameters())


def test_blocking_holds_for_cached_continuations(tiny_mlm, make_image) -> None:
    """Scoring a continuation on a cached prompt (as BLINK evaluation does) must see the same blocking as one
    full forward: oracle = transformers' own forward over prompt + continuation."""
    mlm = tiny_mlm("llava_onevision")
    batch = mlm.encode([Prompt(images=_images(make_image, 1), text="q")])
    blocking = AttentionBlocking(layers=[1, 2, 3], positions=[0, 1, 4])
    blocking.attach(mlm)
    continuation = torch.tensor([[11, 12, 13]])
    full_inputs = dict(batch.inputs)
    full_inputs["input_ids"] = torch.cat([batch.inputs["input_ids"], continuation], 1)
    full_inputs["attention_mask"] = torch.ones_like(full_inputs["input_ids"])
    with torch.no_grad():
        full = mlm.model(**full_inputs).logits[:, -3:]
        prefill = mlm.model(**batch.inputs, use_cache=True)
        cached = mlm.model(input_ids=continuation, attention_mask=full_inputs["attention_mask"],
                           past_key_values=prefill.past_key_values, use_cache=True).logits
        blocking.detach()
        unblocked = mlm.model(**full_inputs).logits[:, -3:]
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(unblocked, full, atol=1e-4)


def test_prefix_hook_handles_unbatched_lookups(tiny_mlm) -> None:
    mlm = tiny_mlm("llava_next")
    prefix = LearnedPrefix(num_tokens=2, seed=3)
    prefix.attach(mlm)
    table = mlm.model.get_input_embeddings()
    slot = torch.tensor(prefix.placeholder_id)
    with torch.no_grad():
        torch.testing.assert_close(table(slot), prefix.vectors[0])
        row = table(torch.tensor([5, prefix.placeholder_id, prefix.placeholder_id]))
        torch.testing.assert_close(row[1:], prefix.vectors)
        torch.testing.assert_close(row[0], table.weight[5])


def test_blocking_calibration_with_mixed_image_sizes(tiny_mlm, make_image) -> None:
    """Qwen2.5-VL spans follow the image size: calibration keeps the most common span length across batches."""
    mlm = tiny_mlm("qwen2_5_vl")
    small = mlm.encode([Prompt(images=[img], text="q") for img in _images(make_image, 2, size=32)])
    large = mlm.encode([Prompt(images=[img], text="q") for img in _images(make_image, 3, size=64)])
    n_small = small.spans[0][0].stop - small.spans[0][0].start
    n_large = large.spans[0][0].stop - large.spans[0][0].start
    assert n_small != n_large
    with torch.no_grad(), mlm.capture(layers=[mlm.num_layers - 1]) as kv:
        mlm.model(**large.inputs)
    keys = torch.stack([kv.image(mlm.num_layers - 1, b, 0).keys for b in range(3)])
    expected = sorted(input_agnosticism(keys).topk(2).indices.tolist())
    blocking = AttentionBlocking(layers=[-1], top_k=2)
    blocking.attach(mlm)
    assert blocking.calibrate(mlm, [small, large]) == {mlm.num_layers - 1: expected}
    blocking.detach()
