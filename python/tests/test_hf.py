"""The transformers integration on the bundled model (a LlamaForCausalLM checkpoint): with `Full`
generate() equals transformers' own; compressed, it equals the C++ engine's generations
(python/tests/data/engine_generations.json, made by make_engine_generations.py). Needs transformers 5.x;
skipped where it is not installed (Debian ships none)."""
import copy
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
import simcalkv.hf  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads((ROOT / "python/tests/data/engine_generations.json").read_text())
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", params=DEVICES)
def model(request):
    m = transformers.AutoModelForCausalLM.from_pretrained(str(ROOT / REFERENCE["model"]), dtype=torch.float32)
    m.to(request.param).eval()
    return m


def greedy(model, prompt_ids, press=None, with_cache=False):
    # The engine ran with --ignore_eos. transformers 5 fills a generation_config field left at None
    # from model.generation_config, so EOS is cleared there too (and restored after).
    saved = model.generation_config
    model.generation_config = copy.deepcopy(saved)
    model.generation_config.eos_token_id = None
    config = copy.deepcopy(model.generation_config)
    config.pad_token_id = 0
    config.do_sample = False
    ids = torch.tensor([prompt_ids], device=model.device)
    kwargs = dict(generation_config=config, max_new_tokens=REFERENCE["max_new_tokens"], return_dict_in_generate=True)
    try:
        with torch.no_grad():
            if press is None:
                out = model.generate(ids, **kwargs)
            else:
                with press(model):
                    out = model.generate(ids, **kwargs)
    finally:
        model.generation_config = saved
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    assert len(tokens) == REFERENCE["max_new_tokens"], f"generate stopped after {len(tokens)} tokens"
    return (tokens, out.past_key_values) if with_cache else tokens


def runs(spec=None):
    return [r for r in REFERENCE["runs"] if spec is None or r["spec"] == spec]


@pytest.mark.parametrize("run", runs("Full"), ids=lambda r: f"prompt{r['prompt']}")
def test_full_equals_transformers_and_the_engine(model, run):
    own = greedy(model, run["prompt_ids"])
    ours = greedy(model, run["prompt_ids"], simcalkv.hf.SimCalKVPress("Full", compression_ratio=0.0))
    assert ours == own
    if model.device.type == "cpu":
        assert own == run["generated_ids"], f"transformers {own}, the engine {run['generated_ids']}"


@pytest.mark.parametrize("run", [r for r in runs() if r["spec"] != "Full"],
                         ids=lambda r: f"{r['spec']}-{r['compress_ratio']}-prompt{r['prompt']}")
def test_compressed_generation_equals_the_cpp_engine(model, run):
    if model.device.type != "cpu":
        pytest.skip("the engine's numbers are CPU float32; on the GPU the generation is only run")
    press = simcalkv.hf.SimCalKVPress(run["spec"], compression_ratio=run["compress_ratio"],
                                      window=REFERENCE["window"])
    ours = greedy(model, run["prompt_ids"], press)
    assert ours == run["generated_ids"], f"ours {ours}, the engine {run['generated_ids']}"


def test_compressed_cache_holds_what_the_policy_kept(model):
    run = runs("Full")[0]
    ids = torch.tensor([run["prompt_ids"]], device=model.device)
    cache = simcalkv.hf.SimCalKVCache(model.config.num_hidden_layers, "AdaKV+SimCalKV", compression_ratio=0.75)
    with torch.no_grad():
        simcalkv.hf.register()
        previous = model.config._attn_implementation
        simcalkv.hf.set_attention(model, "simcalkv")
        try:
            model(ids, past_key_values=cache, use_cache=True)
        finally:
            simcalkv.hf.set_attention(model, previous)
    n = len(run["prompt_ids"])
    assert cache.get_seq_length() == n  # tokens seen, not entries kept
    engine = next(r for r in runs("AdaKV+SimCalKV") if r["compress_ratio"] == 0.75 and r["prompt"] == run["prompt"])
    kept = sum(sum(layer.kept_lengths()[0]) for layer in cache.layers)
    assert kept == engine["entries_after"]  # the C++ engine kept the same number of entries
    dense = n * model.config.num_key_value_heads * 2 * model.config.head_dim * 4 * model.config.num_hidden_layers
    live = sum(layer.rows[0].live_bytes() for layer in cache.layers)
    assert live == kept * (2 * model.config.head_dim * 4 + 8)
    assert live < 0.27 * dense


def test_decode_interval_keeps_the_cache_bounded(model):
    run = runs("Full")[0]
    press = simcalkv.hf.SimCalKVPress("SimCalKV", compression_ratio=0.75, decode_interval=8)
    out, cache = greedy(model, run["prompt_ids"], press, with_cache=True)
    assert len(out) == REFERENCE["max_new_tokens"]
    n = len(run["prompt_ids"])
    for layer in cache.layers:
        after_prefill = layer.target[0]
        # re-compressed every 8 tokens back to the prefill's size: at most 8 - 1 more
        assert max(layer.kept_lengths()[0]) <= after_prefill + 7, (layer.kept_lengths(), after_prefill)
    assert cache.get_seq_length() == n + len(out) - 1
