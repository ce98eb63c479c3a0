"""The memory planner: parameter counts against real models, hand-computed byte
counts, and the ``--plan`` command line."""
import pytest
from conftest import REPO, load_model

from collm_faissret import env as env_cli
from collm_faissret import planner
from collm_faissret.config_loader import load_config

STAGE2 = str(REPO / "train_configs" / "collm_stage2_mf_ml1m.yaml")


def test_7b_weights_match_llama_7b_parameter_count():
    """LLaMA-7B has 6,738,415,616 parameters: 2 bytes each in bf16."""
    w = planner.weight_bytes(planner.SHAPES["7b"], "none")
    assert w["layer"] * 32 + w["root"] == 2 * 6_738_415_616


def test_quantized_weight_bytes_by_hand():
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=10, tie_word_embeddings=True)
    # q 64x64, k/v 64x32, o 64x64, gate/up 64x128, down 128x64: 36864 weights, 64+32+32+64+128+128+64 = 512 rows
    int8 = planner.weight_bytes(shape, "int8")
    assert int8["layer"] == 36864 * 1 + 512 * 4 + 2 * 64 * 4  # + two fp32 norms
    assert int8["root"] == (10 * 64 + 64) * 4  # tied embeddings + final norm, fp32
    nf4 = planner.weight_bytes(shape, "nf4")
    assert nf4["layer"] == pytest.approx(36864 * (0.5 + 1 / 64 + 4 / 16384) + 2 * 64 * 4)


def test_planner_counts_match_the_built_model(env, tmp_path):
    """Backbone weights and trainable / frozen-adapter parameters of conftest's tiny
    stage-2 model, read from its config.json, equal the built model's own counts."""
    cfg, _, model, _ = load_model(env.config("stage2", tmp_path))
    shape = planner.shape_from_config_json(str(env.backbone_dir))
    base = model.llm.get_base_model()
    n_base = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    w = planner.weight_bytes(shape, "none")
    assert w["layer"] * shape["num_hidden_layers"] + w["root"] == 2 * n_base
    counts = planner.trainable_params(shape, cfg.model)
    assert counts["trained"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["frozen_adapter"] == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def test_fsdp_shards_weights_and_batch_limit():
    cfg = load_config(STAGE2, ["run.output_dir=/tmp/unused"])
    shape = planner.SHAPES["13b"]
    one = planner.estimate(shape, cfg.model, "none", "ddp", 4, 256)
    two = planner.estimate(shape, cfg.model, "none", "fsdp", 4, 256, gpus=2)
    assert two["parts"]["weights"] == pytest.approx(one["parts"]["weights"] / 2)
    assert two["parts"]["activations"] == one["parts"]["activations"]
    budget = two["total"] + 0.5 * two["per_sample"]
    assert planner.largest_batch(two, 4, budget) == 4
    assert planner.largest_batch(two, 4, budget + two["per_sample"]) == 5


def test_plan_13b_on_two_24gib_cards_prints_a_fit_under_22(capsys):
    rc = env_cli.main(["--cfg-path", STAGE2, "--plan", "--shape", "13b", "--gpus", "2", "--gib", "22",
                       "--options", "run.batch_size_train=4", "model.max_txt_len=256", "run.output_dir=/tmp/unused"])
    assert rc == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("none", "int8", "nf4"))]
    assert len(rows) == 6
    fitting = [r for r in rows if "|" in r[3:] and r[-2] == "yes"]
    assert fitting and all(float(r[-3]) <= 22 for r in fitting)
    assert any(r[:2] == ["nf4", "ddp"] for r in fitting)
    assert "not supported" in out  # int8 / nf4 with fsdp


def test_plan_needs_a_shape(tmp_path, capsys):
    rc = env_cli.main(["--cfg-path", STAGE2, "--plan", "--options", f"model.llama_model={tmp_path}",
                       "run.output_dir=/tmp/unused"])
    assert rc == 2
    assert "cannot read the shape from config.json" in capsys.readouterr().err


def test_plan_prompt_length_from_the_data(env, tmp_path, capsys):
    """With data and a tokenizer, the plan uses the longest training prompt as training builds it
    (not model.max_txt_len) and says so; without a tokenizer, model.max_txt_len and why."""
    cfg_path = env.config("stage2", tmp_path / "s2", max_txt_len=1000)
    _, _, _, built = load_model(cfg_path)
    longest = int(built["train"].lengths().max())
    assert longest < 1000
    assert env_cli.main(["--cfg-path", cfg_path, "--plan", "--gpus", "1", "--gib", "24"]) == 0
    out = capsys.readouterr().out
    assert f"prompt length: {longest} tokens, the longest of {len(built['train']):,} training prompts" in out
    assert f"prompts of {longest} tokens" in out

    nowhere = tmp_path / "no_tokenizer"
    nowhere.mkdir()
    assert env_cli.main(["--cfg-path", cfg_path, "--plan", "--shape", "7b", "--gpus", "1", "--gib", "24",
                         "--options", f"model.llama_model={nowhere / 'absent'}"]) == 0
    line, = [x for x in capsys.readouterr().out.splitlines() if x.startswith("prompt length:")]
    assert line.startswith("prompt length: 1000 tokens, model.max_txt_len") and "--tokenizer DIR" in line
    assert env_cli.main(["--cfg-path", cfg_path, "--plan", "--shape", "7b", "--gpus", "1", "--gib", "24",
                         "--tokenizer", str(env.backbone_dir),
                         "--options", f"model.llama_model={nowhere / 'absent'}"]) == 0
    assert f"prompt length: {longest} tokens" in capsys.readouterr().out


STAGE1 = str(REPO / "train_configs" / "collm_stage1_ml1m.yaml")
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=10, tie_word_embeddings=True)


def test_activation_terms_by_hand():
    """Per token of a padded batch, L = 10, LoRA r 8 on q/v (both 64 wide), dropout 0.05."""
    s1 = load_config(STAGE1, ["run.output_dir=/tmp/unused"]).model
    s2 = load_config(STAGE2, ["run.output_dir=/tmp/unused"]).model
    cpu1 = planner.activation_terms(SMALL, s1, 10, "cpu")
    # norms 2 x (4*64 + 4); q/out 2*64 each, k/v 2*32 each (no mask on the CPU: SDPA takes the 2
    # kv heads as they are) + lse 4*4; mlp 2*3*128;
    # LoRA per module: fp32 dropout noise 4*64 + lora_A input 4*64 + lora_B input 4*8
    assert cpu1["layer"] == {"norms": 520, "attention": 400, "mlp": 768, "lora": 2 * 544}
    # no final norm (skipped in the body); cos and sin (head_dim 16); no mask (right padding);
    # stage 1: layer 0 keeps no norm input and no dropout mask
    assert cpu1["fixed"] == {"rope": 64, "first_layer": -260 - 2 * 256} and cpu1["shared"] == {}
    cuda1 = planner.activation_terms(SMALL, s1, 10, "cuda")
    assert cuda1["layer"]["lora"] == 2 * (64 + 256 + 32)  # a bool dropout mask on CUDA
    assert cuda1["layer"]["attention"] == 2 * 4 * 64 + 16  # with the causal mask k, v expanded to 4 heads
    assert cuda1["shared"] == {"mask": 2 * 10 * 10}  # SDPA's additive copy of the [L, L] causal mask per layer
    cpu2 = planner.activation_terms(SMALL, s2, 10, "cpu")
    assert cpu2["layer"]["lora"] == 2 * 256  # frozen adapter: only the dropout mask, for the input's gradient
    assert "first_layer" not in cpu2["fixed"]  # the projector trains: layer 0's input carries a gradient
    est = planner.estimate(SMALL, s2, "none", "ddp", 3, 10, device="cpu")
    per_token = 3 * (520 + 400 + 768 + 512) + 64
    assert est["parts"]["activations"] == 3 * 10 * per_token
    cuda = planner.estimate(SMALL, s2, "none", "ddp", 3, 10, device="cuda")
    per_token = 3 * (520 + 528 + 768 + 2 * 64) + 64  # frozen adapter: CUDA's bool dropout mask only
    assert cuda["parts"]["activations"] == 3 * 10 * per_token + 3 * 200  # the mask once per layer
    budget = cuda["total"] + 2 * cuda["per_sample"]
    assert planner.largest_batch(cuda, 3, budget) == 5


@pytest.mark.parametrize("stage,quantization", [("stage1", "none"), ("stage2", "none"), ("stage2", "nf4")])
def test_activation_estimate_matches_autograds_saved_tensors(env, tmp_path, stage, quantization):
    """The planner's activation bytes against the storages autograd saves in one real bf16
    training step of the tiny model on CPU (what bench/act_memory.py measures at named shapes);
    with nf4 the hidden states are fp32 (k-bit preparation), and the planner says so."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("act_memory", REPO / "bench" / "act_memory.py")
    act_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(act_memory)
    cfg, task, model, ds = load_model(env.config(stage, tmp_path), "model.dtype=bf16",
                                      f"model.quantization={quantization}")
    batch = model.collate_fn(ds["train"].__getitems__([0, 1, 2, 3]))
    measured = act_memory.step_memory(model, lambda: task.train_step(model, batch))["saved"]
    shape = planner.shape_from_config_json(str(env.backbone_dir))
    est = planner.estimate(shape, cfg.model, quantization, "ddp", 4, int(batch["input_ids"].shape[1]), device="cpu")
    assert est["parts"]["activations"] == pytest.approx(measured, rel=0.05)
