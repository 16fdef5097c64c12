"""The benchmarks package keeps working: every case runs at smoke size on the CPU through
tools/benchmark.py, failures of a peer are recorded rather than fatal, the report's verdicts follow the
targets, and the experiment scripts import as package modules."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from benchmarks import harness, run
from benchmarks.cases import Case, Comparison, Point, default_cases
from benchmarks.peers import OURS, Subject
from benchmarks.report import comparison_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(REPO / "tools" / "benchmark.py"), "--smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "smoke.json").read_text())


def test_smoke_measures_every_case_and_subject(smoke):
    out, report = smoke
    cases = default_cases()
    assert [c["name"] for c in report["cases"]] == [c.name for c in cases]
    for case in cases:
        items = [r for r in report["results"] if r["case"] == case.name]
        assert len(items) == len(case.smoke_points), f"{case.name}: {items}"
        for item in items:
            assert item["status"] == "ok", f"{case.name} was not measured: {item.get('reason')}"
            assert item["dtype"] == "fp32" and item["compile"] == "off"
            assert set(item["subjects"]) == {s.name for s in case.subjects}
            for name, s in item["subjects"].items():
                assert s["status"] == "ok", f"{case.name}/{name}: {s.get('error')}"
                assert s["median_ms"] > 0 and s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
                assert s["repeats"] == 1 and s["throughput"] > 0
                assert isinstance(s.get("flops"), int) and s["flops"] > 0, f"{case.name}/{name}: {s}"
                assert s["tflops"] > 0 and s["pct_of_ceiling"] > 0


def test_smoke_writes_report_table_and_plot(smoke):
    out, report = smoke
    assert report["ceilings"]["cpu"]["tflops"] > 0
    assert report["environment"]["torch"] == torch.__version__
    assert "--smoke" in report["command"]
    md = (out / "smoke.md").read_text()
    for case in report["cases"]:
        assert case["title"] in md
    assert "## Targets" in md and "Smoke run" in md
    # every comparison of every case got a row with a speedup
    rows = comparison_rows(report)
    expected = sum(len(c.comparisons) * len(c.smoke_points) for c in default_cases())
    assert len(rows) == expected and all("speedup" in r for r in rows)
    assert report["plot"] == "smoke.png"
    assert (out / "smoke.png").stat().st_size > 10_000


def _tiny_case(*subjects, comparisons=()):
    return Case(
        "tiny",
        "tiny case",
        "forward",
        "images/s",
        list(subjects),
        points=[Point(1, (64, 64))],
        smoke_points=[Point(1, (64, 64))],
        comparisons=list(comparisons),
    )


class _FailsToRun(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB")


def _missing_package(size, smoke):
    import hiera_det_no_such_peer  # noqa: F401


def test_failing_peers_are_recorded_and_the_run_goes_on(tmp_path):
    case = _tiny_case(
        OURS,
        Subject("missing", "peer", "a peer whose package is absent", _missing_package),
        Subject("oom", "peer", "a peer that runs out of memory", lambda size, smoke: _FailsToRun()),
        comparisons=[
            Comparison("ours", "missing", min_speedup=1.0),
            Comparison("ours", "oom", min_speedup=1.0),
        ],
    )
    report = run.main(["--smoke", "--out", str(tmp_path), "--tag", "t", "--cases", "tiny"], cases=[case])
    (item,) = report["results"]
    subjects = item["subjects"]
    assert subjects["ours"]["status"] == "ok" and subjects["ours"]["median_ms"] > 0
    assert subjects["missing"]["status"] == "error"
    assert "build failed: ModuleNotFoundError" in subjects["missing"]["error"]
    assert "hiera_det_no_such_peer" in subjects["missing"]["error"]
    assert subjects["oom"]["status"] == "error" and "CUDA out of memory" in subjects["oom"]["error"]
    md = (tmp_path / "t.md").read_text()
    assert "error: build failed: ModuleNotFoundError" in md and "not measured (missing did not run)" in md
    assert json.loads((tmp_path / "t.json").read_text())["results"][0]["subjects"]["oom"]["status"] == "error"


def test_spent_time_budget_records_every_item_as_skipped(tmp_path):
    args = "--smoke --tag t --time-budget 0 --cases hiera_b_224,maskrcnn_train_1024"
    report = run.main(["--out", str(tmp_path), *args.split()])
    assert len(report["results"]) == 2
    for item in report["results"]:
        assert item["status"] == "skipped" and "--time-budget" in item["reason"]
    assert "not measured" in (tmp_path / "t.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is visible")
def test_full_size_without_gpu_is_skipped_with_the_fix(tmp_path):
    args = "--tag t --cases hiera_b_224,cpu_hiera_t_fpn_512 --dtypes bf16 --compile off --time-budget 0"
    report = run.main(["--out", str(tmp_path), *args.split()])
    reasons = {r["case"]: r["reason"] for r in report["results"]}
    # the CPU case only measures fp32: the bf16 request is recorded as not part of it
    assert "measures fp32 only" in reasons["cpu_hiera_t_fpn_512"]
    report = run.main(
        ["--out", str(tmp_path), *"--tag t --cases hiera_b_224 --dtypes fp32 --compile off".split()]
    )
    (item,) = report["results"]
    assert (
        item["status"] == "skipped" and "needs a CUDA GPU" in item["reason"] and "--smoke" in item["reason"]
    )


def test_bad_case_name_is_rejected_with_the_choices():
    with pytest.raises(SystemExit):
        run.parse_args(["--cases", "hiera_b_2244"])


def test_interleaved_timing_rotates_order_and_keeps_going_after_a_failure():
    order, calls = [], {"fails": 0}

    def good(name):
        return lambda: order.append(name)

    def flaky():
        calls["fails"] += 1
        order.append("flaky")
        if calls["fails"] == 2:
            raise RuntimeError("out of memory")

    result = harness.time_interleaved(
        {"a": good("a"), "b": good("b"), "flaky": flaky}, torch.device("cpu"), repeats=4
    )
    assert order[:3] == ["a", "b", "flaky"] and order[3:6] == ["b", "flaky", "a"]
    assert len(result.times_ms["a"]) == 4 and len(result.times_ms["b"]) == 4
    assert len(result.times_ms["flaky"]) == 1 and "RuntimeError: out of memory" in result.errors["flaky"]


def test_summary_statistics():
    stats = harness.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats["median_ms"] == 3.0 and stats["p10_ms"] == pytest.approx(1.4)
    assert stats["p90_ms"] == pytest.approx(4.6) and stats["repeats"] == 5


def test_verdicts_follow_the_targets():
    def subject(ms, mem):
        return {"status": "ok", "median_ms": ms, "peak_mem_bytes": mem}

    report = {
        "cases": [
            {
                "name": "c",
                "comparisons": [
                    {"ours": "o", "peer": "fast", "min_speedup": 1.0, "max_memory_ratio": 1.0},
                    {"ours": "o", "peer": "slow", "min_speedup": 1.0, "max_memory_ratio": 1.0},
                    {"ours": "o", "peer": "lean", "min_speedup": None, "max_memory_ratio": 1.0},
                    {"ours": "o", "peer": "free", "min_speedup": None, "max_memory_ratio": None},
                    {"ours": "o", "peer": "broken", "min_speedup": 1.0, "max_memory_ratio": None},
                ],
            }
        ],
        "results": [
            {
                "case": "c",
                "status": "ok",
                "point": {"batch": 1, "size": [8, 8]},
                "dtype": "bf16",
                "compile": "off",
                "subjects": {
                    "o": subject(10.0, 100),
                    "fast": subject(5.0, 100),
                    "slow": subject(20.0, 200),
                    "lean": subject(10.0, 50),
                    "free": subject(1.0, 1),
                    "broken": {"status": "error", "error": "x"},
                },
            }
        ],
    }
    rows = {r["peer"]: r for r in comparison_rows(report)}
    assert rows["fast"]["speedup"] == 0.5 and rows["fast"]["verdict"] == "missed"
    assert rows["slow"]["speedup"] == 2.0 and rows["slow"]["memory_ratio"] == 0.5
    assert rows["slow"]["verdict"] == "met"
    assert rows["lean"]["verdict"] == "missed"  # 2x the memory of the peer
    assert rows["free"]["verdict"] == "no target"
    assert rows["broken"]["verdict"] == "not measured"


class _Scaled(nn.Module):
    def __init__(self, log: list):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))
        self.log = log

    def forward(self, x):
        self.log.append(self)
        return x * self.weight


def test_isolated_subjects_are_built_measured_and_released_one_at_a_time():
    events, calls = [], []
    x = torch.randn(2, 4)

    def build(name):
        events.append(("build", name))
        return "no such model" if name == "broken" else harness.ForwardWorkload(_Scaled(calls), x)

    entries, stopped = harness.measure_subjects(
        ["a", "broken", "b"],
        build,
        "fp32",
        None,
        torch.device("cpu"),
        warmup=2,
        repeats=3,
        isolate=True,
        release=lambda names: events.append(("release", *names)),
    )
    assert events == [
        ("build", "a"), ("release", "a"), ("build", "broken"), ("release", "broken"),
        ("build", "b"), ("release", "b"),
    ]  # fmt: skip
    assert not stopped and entries["broken"] == {"status": "error", "error": "no such model"}
    for name in ("a", "b"):
        assert entries[name]["status"] == "ok" and entries[name]["repeats"] == 3
        assert entries[name]["flops"] == 0  # an elementwise product: no matmul FLOPs
    assert len(calls) == 2 * (2 + 3)  # warm-up (the FLOP count is the first of it) and timed calls


def test_experiment_scripts_are_package_modules():
    for name in ("trunk_variants", "perf_run", "shapes_ap", "video_vs_frame", "kernel_check"):
        module = importlib.import_module(f"benchmarks.{name}")
        assert callable(module.main), name


def test_trunk_variants_time_profile_and_compare_the_kernel_variants(monkeypatch):
    """The experiment on a tiny Hiera, eager in fp32 on the CPU (bf16 matmuls are slow on CPUs without bf16
    units): every variant is timed, the profiled ones broken down by kernel category, FLOPs counted, and a
    variant's output matches the shipped model's."""
    tv = importlib.import_module("benchmarks.trunk_variants")
    variants = ["shipped", "default", "default+tanh", "fast-sdpa"]
    monkeypatch.setitem(tv.CASES, "tiny", ("hiera_tiny_224", "mask_unit", (3, 32, 32), 2, "im/s", variants))
    monkeypatch.setattr(tv, "VARIANTS", {k: (options, None) for k, (options, _) in tv.VARIANTS.items()})
    monkeypatch.setattr(tv, "PROFILED", ("shipped",))
    monkeypatch.setattr(tv, "WARMUP", 1)
    monkeypatch.setattr(tv, "DTYPE", "fp32")
    record = tv.measure_case("tiny", torch.device("cpu"), repeats=2, deadline=float("inf"))
    results = record["results"]
    assert list(results) == variants
    assert record["flops"] > 0
    for r in results.values():
        assert r["median_ms"] > 0 and r["im/s"] > 0
        assert r["tflops"] == round(record["flops"] / r["median_ms"] / 1e9, 1)
        assert r["back_to_back_ms"] > 0  # the record rounds both: compare at that precision
        assert r["back_to_back_im/s"] == pytest.approx(2000 / r["back_to_back_ms"], rel=1e-3)
    assert results["shipped"]["rel_max_diff_vs_shipped"] == 0.0
    assert results["default"]["rel_max_diff_vs_shipped"] == 0.0  # no Triton kernel, no epilogue on the CPU
    assert results["default+tanh"]["rel_max_diff_vs_shipped"] == 0.0
    assert results["fast-sdpa"]["rel_max_diff_vs_shipped"] < 1e-4
    assert set(record["profiles"]) == {"shipped"}
    shipped = record["profiles"]["shipped"]
    assert shipped["gpu_ms_per_call"] > 0 and shipped["top_kernels"]
    assert abs(sum(shipped["by_category_ms"].values()) - shipped["gpu_ms_per_call"]) < 0.01


def test_timeline_measures_a_calls_span_busy_time_and_the_gaps_before_each_kernel():
    """Two identical calls of three kernels: only the last call counts; a gap is charged to the kernel that
    waited, and the largest come first."""
    from benchmarks.trunk_variants import timeline

    call = [
        (0.0, 100.0, "nvjet_gemm"),
        (110.0, 150.0, "triton_per_fused_layer_norm"),
        (180.0, 200.0, "mlp_kernel"),
    ]
    spans = call + [(start + 1000, end + 1000, name) for start, end, name in call]
    t = timeline(spans, calls=2)
    assert t["kernels_per_call"] == 3
    assert (t["span_ms"], t["busy_ms"], t["gaps_ms"]) == (0.2, 0.16, 0.04)
    assert t["gaps_ms_by_next_category"] == {
        "fc1+gelu / mlp (fused)": 0.03,
        "pointwise/norm (inductor)": 0.01,
    }
    assert t["largest_gaps"][0] == {
        "us": 30.0,
        "after": "triton_per_fused_layer_norm",
        "before": "mlp_kernel",
    }
    assert t["even_split"]
    # a first call with one kernel more (a one-off copy, say): the last call is still read from the tail
    uneven = timeline([(-50.0, -40.0, "copy")] + spans, calls=2)
    assert not uneven["even_split"] and uneven["kernels_per_call"] == 3 and uneven["span_ms"] == 0.2


def test_linear_gelu_candidates_match_the_mlp_in_tritons_cpu_interpreter():
    """The candidate fc1 + GELU kernels that fused_mlp_sweep --candidates times (persistent, pointer loads and
    TMA descriptors), in fp32 through Triton's interpreter, with fewer programs than tiles and rows that
    divide no tile."""
    pytest.importorskip("triton")
    from triton_interpreter import interpreted

    script = (
        "import torch, triton\n"
        "import torch.nn.functional as F\n"
        "from benchmarks import linear_gelu_candidates as c\n"
        "triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8))\n"
        "c._allocator_set = True\n"
        "torch.cuda.get_device_properties = lambda d: type('P', (), {'multi_processor_count': 3})\n"
        "torch.manual_seed(0)\n"
        "x, w, b = torch.randn(200, 64), torch.randn(96, 64) * 0.1, torch.randn(96)\n"
        "ref = F.gelu(F.linear(x, w, b))\n"
        "worst = 0.0\n"
        "configs = [('persistent', (64, 32, 32, 4, 2, 1)),\n"
        "           ('tma', (64, 32, 32, 4, 2, 1, True, True, False)),\n"
        "           ('tma', (64, 32, 32, 4, 2, 1, False, False, False))]\n"
        "for kind, config in configs:\n"
        "    worst = max(worst, float((c.launch(kind, x, w, b, config, 'rational') - ref).abs().max()))\n"
        "print(worst)\n"
    )
    assert interpreted(script) < 1e-5


def test_kernel_check_plans_known_variants_and_reports_the_targets():
    from benchmarks import trunk_variants as tv
    from benchmarks.kernel_check import LAYOUTS, PLAN, markdown

    for case, labels in PLAN + LAYOUTS:
        assert case in tv.CASES and all(label in tv.VARIANTS for label in labels), case

    def entry(ms, unit, tflops=None):
        ours = {} if tflops is None else {"tflops": tflops, "rel_max_diff_vs_shipped": 0.0}
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, unit: 128_000 / ms, "compile_s": 1.0, **ours}

    record = {"tag": "t", "gpu": "GPU", "torch": "2", "command": ["kernel_check"], "cases": {
        "hiera_b_224_b128": {"results": {"default+ro": entry(10.0, "im/s", 200.0),
                                         "timm": entry(20.0, "im/s")}},
        "hiera_b_16x224_video_b16": {"results": {"default+ro": entry(160.0, "clips/s", 190.0)}},
        "window_1024_b8": {"results": {"default": entry(20.0, "im/s", 150.0)}},
        "mask_unit_1024_b8": {"results": {"default": entry(25.0, "im/s", 220.0)}},
    }}  # fmt: skip
    md = markdown(record)
    assert "best of ours `default+ro` 12,800 im/s, **met**" in md
    assert "best of ours `default+ro` 800 clips/s, **missed**" in md
    assert "window 150.0 TFLOP/s against mask unit 220.0 TFLOP/s" in md and "**missed**." in md
    assert "| timm | 20.00 (20.00-20.00) | 6,400.0 |  | — | 1.0 | (peer) |" in md
    # the back-to-back column, where the record has it
    record["cases"]["hiera_b_224_b128"]["results"]["timm"].update(
        back_to_back_ms=16.0, **{"back_to_back_im/s": 8000.0}
    )
    assert "| timm | 20.00 (20.00-20.00) | 6,400.0 | 16.00, 8,000 | — | 1.0 | (peer) |" in markdown(record)


def test_kernel_names_fall_in_the_profile_categories():
    from benchmarks.trunk_variants import kernel_category

    assert kernel_category("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN") == "gemm"
    assert kernel_category("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
    assert kernel_category("triton_tem_fused__to_copy_flex_attention_ones_13") == "attention"
    assert kernel_category("add_layer_norm_kernel") == "residual add + norm (Triton)"
    assert kernel_category("triton_poi_fused_gelu_view_36") == "pointwise/norm (inductor)"
    assert kernel_category("linear_gelu_kernel") == "fc1+gelu / mlp (fused)"
    assert kernel_category("mlp_kernel") == "fc1+gelu / mlp (fused)"
    assert kernel_category("window_attention_kernel") == "attention (small-window kernel)"
    assert kernel_category("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop") == "conv"


def test_perf_run_splits_issue_16s_figures_into_runs_of_one_compile_mode_each():
    from benchmarks.perf_run import LAYOUT_FLOP_RATIO, plan

    runs = {suffix: (cases, options) for suffix, cases, options, _ in plan()}
    assert list(runs) == ["trunk", "cudagraphs", "detector", "train_compiled"]
    assert abs(sum(share for *_, share in plan()) - 1.0) < 1e-9
    trunk = {c.name: c for c in runs["trunk"][0]}
    assert [s.name for s in trunk["hiera_b_224"].subjects] == ["ours", "timm"]
    assert all(c.peer == "timm" for c in trunk["hiera_b_224"].comparisons)
    (layout,) = trunk["hiera_b_1024_layouts"].comparisons
    assert (layout.ours, layout.peer) == ("ours_window", "ours_mask_unit")
    assert layout.min_speedup == LAYOUT_FLOP_RATIO
    assert runs["cudagraphs"][1][-1] == "reduce-overhead"
    assert [[s.name for s in c.subjects] for c in runs["train_compiled"][0]] == [["ours"]]
    assert abs(LAYOUT_FLOP_RATIO - 6226.1 / 3867.6) < 0.01


def test_shapes_learning_reads_evaluations_onset_and_schedule(tmp_path):
    from benchmarks.shapes_learning import (
        SESSION4_RECIPE,
        SESSION6_CONFIG,
        SESSION6_DATA,
        SESSION7_SIZES,
        VARIANTS,
        data_rules,
        read_run,
        schedule_overrides,
    )

    rows = [
        {"iteration": 19, "total_loss": 3.0, "loss_cls": 1.5, "time": 0.4, "fast_rcnn/false_negative": 1.0},
        {"iteration": 39, "total_loss": 2.0, "loss_cls": 1.0, "time": 0.6, "fast_rcnn/false_negative": 0.9},
        {"iteration": 39, "bbox/AP": 1.25, "bbox/AP50": 3.0, "segm/AP": 0.5, "bbox/AP-ring": 2.0},
        {"iteration": 59, "total_loss": 1.5, "loss_cls": 0.8, "time": 0.5, "fast_rcnn/false_negative": 0.97},
        {"iteration": 79, "total_loss": 1.2, "loss_cls": 0.6, "time": 0.5, "fast_rcnn/false_negative": 0.5},
        {"iteration": 80, "bbox/AP": 4.0, "bbox/AP50": 9.0, "segm/AP": 2.0, "bbox/AP-ring": 8.0},
    ]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"iteration": 9')
    run = read_run(tmp_path, eval_period=40)
    # the periodic evaluation (logged at 39) and the final one (logged at max_iter 80) both land on their iteration
    assert run["evals"] == {
        40: {"box_AP": 1.25, "box_AP50": 3.0, "mask_AP": 0.5, "box_AP_per_class": {"ring": 2.0}},
        80: {"box_AP": 4.0, "box_AP50": 9.0, "mask_AP": 2.0, "box_AP_per_class": {"ring": 8.0}},
    }
    assert run["fg_rois_found_from"] == 80  # the dip at 40 did not last
    assert run["iterations_done"] == 80 and run["s_per_iter"] == 0.5
    assert schedule_overrides(800, 200) == [
        "SOLVER.MAX_ITER",
        "800",
        "SOLVER.STEPS",
        "(640, 744)",
        "TEST.EVAL_PERIOD",
        "200",
        "SOLVER.CHECKPOINT_PERIOD",
        "8000",
    ]
    # variants measured before session 7 run on the config and the data of their time
    assert (
        VARIANTS["current"][1] == SESSION6_CONFIG and VARIANTS["ship"][1] == SESSION6_CONFIG + SESSION4_RECIPE
    )
    assert data_rules("current") == SESSION6_DATA and data_rules("vis60_s7c_i2400") == {
        "min_visible_fraction": 0.6
    }
    # session 7's last rounds: the new config with the training sizes of their time
    assert VARIANTS["vis60_s7c_i2400"][1] == SESSION7_SIZES
    assert VARIANTS["vis60_s7c_ms144_i2400"][1][-4:] == [
        "INPUT.MIN_SIZE_TRAIN",
        "(144,160,176)",
        "INPUT.MAX_SIZE_TRAIN",
        "256",
    ]
    assert all(len(o) % 2 == 0 for _, o in VARIANTS.values())


def test_detector_speed_names_unknown_parts_and_counts_child_processes(capsys):
    from benchmarks import detector_speed

    with pytest.raises(SystemExit):
        detector_speed.main(["--out", "unused", "--smoke", "--parts", "inference,bogus"])
    assert "unknown --parts bogus; choose from host_after_compile, inference" in capsys.readouterr().err
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert detector_speed.compile_workers() >= 1
    finally:
        child.kill()
        child.wait()


def test_the_hand_captured_graph_mode_compiles_in_the_default_mode_and_wants_cuda_inputs():
    """``GRAPH_MODE`` is not a torch.compile mode: it compiles in the default mode, and the workload captures
    the CUDA graph itself, so CPU inputs are refused with the reason."""
    model = nn.Linear(4, 4)
    workload = harness.ForwardWorkload(model, torch.randn(2, 4))
    assert workload.module_for(harness.GRAPH_MODE) is not model  # a compiled wrapper, mode None
    with pytest.raises(ValueError, match="captures a CUDA graph: give the workload CUDA inputs"):
        workload.step("fp32", harness.GRAPH_MODE)
    from benchmarks import trunk_variants as tv

    graphed = [label for label, (_, mode) in tv.VARIANTS.items() if mode == harness.GRAPH_MODE]
    assert {"default+graph", "default+bf16w+graph", "timm+graph", "timm+bf16w+graph"} <= set(graphed)


def test_layout_efficiency_finds_the_rest_rate_that_equalises_the_layouts():
    from benchmarks.layout_efficiency import required_rest_rate

    window = {"flops": {"attention": 1e12, "rest": 3e12}}
    mask_unit = {"flops": {"attention": 3e12, "rest": 3e12}, "attention_ms": 6.0}
    for attention_ms in (0.0, 1.0, 2.0):
        rate = required_rest_rate(window, mask_unit, attention_ms) * 1e12
        window_rate = 4e12 / (3e12 / rate + attention_ms * 1e-3)
        mask_unit_rate = 6e12 / (3e12 / rate + 6e-3)
        assert window_rate == pytest.approx(mask_unit_rate)
    # the window layout's attention as slow per FLOP as the mask unit's: the rest must match that rate
    assert required_rest_rate(window, mask_unit, 2.0) == pytest.approx(0.5e3)
    # attention taking longer than the mask unit's for fewer FLOPs: no rest rate is enough
    assert required_rest_rate(window, mask_unit, 6.0) is None


def test_layout_efficiency_splits_flops_and_records_linear_shapes_on_the_meta_device():
    from benchmarks.layout_efficiency import flop_split, linear_calls

    window = flop_split("window", "hiera_tiny_224", 512, 2)
    mask_unit = flop_split("mask_unit", "hiera_tiny_224", 512, 2)
    assert window["attention"] > 0 and mask_unit["attention"] > window["attention"]
    assert window["attention"] + window["rest"] == sum(window["by_op"].values())
    calls = linear_calls("window", "hiera_tiny_224", 512, 2)
    # Hiera-T: 1-2-7-2 blocks, each qkv, proj, fc1, fc2, and one widening proj per later stage
    assert sum(calls.values()) == 12 * 4 + 3
    linear_flops = sum(2 * rows * k * n * count for (rows, k, n), count in calls.items())
    assert linear_flops == window["by_op"]["aten.addmm"]


def test_layout_efficiency_smoke_writes_its_record_and_table(tmp_path):
    from benchmarks import layout_efficiency

    out = tmp_path / "le.json"
    assert layout_efficiency.main(["--smoke", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["layouts"]) == {"window", "mask_unit"}
    for lay in record["layouts"].values():
        assert lay["attention_ms"] > 0 and lay["rest_ms"] > 0
    assert set(record["analysis"]["required_rest_tflops"]) == {
        "window attention as measured",
        "window attention at the mask unit's attention rate",
        "window attention free",
    }
    assert "Window against mask unit" in out.with_suffix(".md").read_text()
