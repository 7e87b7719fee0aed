"""Golden tests of reports/: a run store written from small known numbers renders to exact Markdown and
LaTeX (means, stds, bold, FAILED / n/a and their footnotes); plots are valid PNG/PDF; LaTeX compiles."""
import shutil
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from harness.config import Suite, load_suite
from harness.models import build_model
from harness.store import Store, write_json
from reports import plots
from reports.ablation import ablation_table
from reports.build import suite_report
from reports.latex import standalone, to_latex
from reports.markdown import to_html, to_markdown
from reports.table import build_table, tidy

SUITE = """
dataset: mnist
teacher: {model: {name: lenet5}}
student: {name: lenet5_half}
budget: {iterations: 100, eval_every: 50}
methods: {kd_ori: {}, dfad: {nz: 8, ngf: 4, batch_size: 4}}
paper: {teacher: 0.989, kd_ori: 0.988, kd_unr: 0.957, dafl: 0.981, dfad: 0.983}
"""
ABLATION = """
dataset: mnist
teacher: {model: {name: lenet5}}
student: {name: lenet5_half}
budget: {iterations: 100, eval_every: 50}
methods: {dfad_mae: {method: dfad, loss: mae}, dfad_mse: {method: dfad, loss: mse}, dfad_kld: {method: dfad, loss: kld}}
"""


def put(store, method, seed, status="done", best=None, final=None, **extra):
    rd = store.run(method, seed)
    write_json(rd.summary_path, {"status": status, "best_acc": best, "final_acc": final if final else best,
                                 "student_macs": 133740, "profile": "paper", **extra})
    if status == "done":  # two evaluations, the second the best; losses for the DFAD curves
        rd.write_metrics([{"iteration": 50, "test_acc": best - 0.1, "elapsed_s": 1.0, "loss_S": 0.5 + seed,
                           "loss_G": -0.5}, {"iteration": 100, "test_acc": best, "elapsed_s": 2.0,
                                             "loss_S": 0.2, "loss_G": -0.3}])
    return rd


def stored_suite(tmp_path, name: str, text: str, teacher_acc: float, macs: int = 433000):
    """A suite file `<name>.yaml` (its stem names the store's folder), loaded, and a run store holding its teacher's
    record: (path, suite, store)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    store = Store(tmp_path / "runs", name)
    write_json(store.teacher_summary_path, {"test_acc": teacher_acc, "macs": macs})
    return path, load_suite(str(path), "paper"), store


@pytest.fixture
def golden(tmp_path):
    # "mnist": the store dir the --paper-table cls column reads
    _, suite, store = stored_suite(tmp_path, "mnist", SUITE, 0.989)
    for seed, acc in enumerate((0.987, 0.988, 0.989)):
        put(store, "kd_ori", seed, best=acc)
    for seed, acc in enumerate((0.981, 0.983, 0.985)):
        put(store, "dfad", seed, best=acc)
    put(store, "random", 0, "failed", reason="RuntimeError: boom")
    put(store, "kd_rel", 0, "failed", reason="USPS not under $DFAD_DATA", unavailable=True)
    put(store, "zskt", 0, best=0.95), put(store, "zskt", 1, best=0.97)
    put(store, "zskt", 2, "failed", reason="diverged: loss is nan")
    return suite, tmp_path / "runs"


CAPTION = ("Test accuracy, the best of each run's evaluations; mean ± std over n=2-3 seeds (cells with fewer say "
           "so); FLOPs: MACs per image (the student's; the teacher's in its row); bold: best data-free result per "
           "dataset; profile: paper.")
MD = f"""**{CAPTION}**

| Method | MNIST FLOPs | MNIST Acc. |
|:--|--:|--:|
| Teacher | 433K | 0.989 |
| KD-ORI | 134K | 0.988 ± 0.001 |
| KD-REL | 134K | n/a<sup>a</sup> |
| KD-UNR | 134K | n/a<sup>b</sup> |
| *data-free* |  |  |
| RANDOM | 134K | FAILED<sup>c</sup> |
| DAFL | 134K | n/a<sup>b</sup> |
| DFAD | 134K | **0.983 ± 0.002** |
| *later data-free methods* |  |  |
| ZSKT | 134K | 0.960 ± 0.014 (n=2)<sup>d</sup> |

<sup>a</sup> could not run: USPS not under $DFAD_DATA  
<sup>b</sup> not run  
<sup>c</sup> run failed: RuntimeError: boom  
<sup>d</sup> 1 of 3 seeds did not finish: diverged: loss is nan  
"""
TEX_BODY = r"""\midrule
Teacher & 433K & 0.989 \\
KD-ORI & 134K & 0.988 $\pm$ 0.001 \\
KD-REL & 134K & n/a\textsuperscript{a} \\
KD-UNR & 134K & n/a\textsuperscript{b} \\
\midrule
RANDOM & 134K & FAILED\textsuperscript{c} \\
DAFL & 134K & n/a\textsuperscript{b} \\
DFAD & 134K & \bfseries 0.983 $\pm$ 0.002 \\
\midrule
ZSKT & 134K & 0.960 $\pm$ 0.014 (n=2)\textsuperscript{d} \\
\bottomrule
"""


def test_golden_markdown(golden):
    suite, runs = golden
    assert to_markdown(build_table([suite], ["mnist"], runs)) == MD


def test_golden_latex(golden):
    suite, runs = golden
    tex = to_latex(build_table([suite], ["mnist"], runs))
    assert TEX_BODY in tex
    assert "\\toprule\n & \\multicolumn{2}{c}{MNIST} \\\\\n\\cmidrule(lr){2-3}\nMethod & FLOPs & Acc. \\\\\n" in tex
    assert r"\textsuperscript{d}\,1 of 3 seeds did not finish: diverged: loss is nan" in tex
    assert r"\textsuperscript{a}\,could not run: USPS not under \$DFAD\_DATA" in tex
    assert r"mean $\pm$ std over n=2-3" in tex


def test_with_paper_and_final_metric(golden):
    suite, runs = golden
    md = to_markdown(build_table([suite], ["mnist"], runs), "under")
    assert "| DFAD | 134K | **0.983 ± 0.002** |\n| *paper* |  | *0.983* |" in md
    delta = to_latex(build_table([suite], ["mnist"], runs), "delta")
    assert "\nMethod & FLOPs & Acc. & $\\Delta$" in delta
    assert r"DFAD & 134K & \bfseries 0.983 $\pm$ 0.002 & +0.000 \\" in delta
    final = to_markdown(build_table([suite], ["mnist"], runs, metric="final"))
    assert "the last of each run's evaluations" in final


def test_ablation_table(tmp_path):
    path = tmp_path / "ablation-loss.yaml"
    path.write_text(ABLATION)
    suite = load_suite(str(path), "paper")
    store = Store(tmp_path / "runs", suite.name)
    for seed, (a, b, c) in enumerate(((0.98, 0.95, 0.90), (0.97, 0.96, 0.92))):
        put(store, "dfad_mae", seed, best=a), put(store, "dfad_mse", seed, best=b), put(store, "dfad_kld", seed, best=c)
    md = to_markdown(ablation_table([suite], tmp_path / "runs"))
    assert "| Loss | MNIST Acc. |" in md
    assert "| MAE | **0.975 ± 0.007** |\n| MSE | 0.955 ± 0.007 |\n| KLD | 0.910 ± 0.014 |" in md
    tex = to_latex(ablation_table([suite], tmp_path / "runs"))
    assert "MAE & \\bfseries 0.975 $\\pm$ 0.007 \\\\\nMSE & 0.955 $\\pm$ 0.007 \\\\" in tex
    assert "\nLoss & Acc. \\\\\n\\midrule" in tex  # the rows' heading, as in Markdown
    compiles(tmp_path, standalone(tex))
    png = plots.ablation([suite], tmp_path / "runs", tmp_path / "out")
    assert_image(png)


def assert_image(png):
    import matplotlib.image

    assert png is not None and png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w = matplotlib.image.imread(png).shape[:2]
    assert h > 100 and w > 100
    assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_plots_and_report_md(golden):
    suite, runs = golden
    for seed in range(3):  # a generator checkpoint as the runner leaves it, rebuilt by the sample grid
        rd = Store(runs, "mnist").run("dfad", seed)
        rd.write_config({"params": {"generator": "generator_a", "nz": 8, "ngf": 4}})
        G = build_model("generator_a", nz=8, ngf=4, input_shape=(1, 32, 32))
        torch.save({"method": {"modules": {"generator": G.state_dict()}}}, rd.checkpoint)
    report = suite_report(suite, runs)
    out = report.parent
    for name in ("accuracy", "accuracy-time", "losses", "samples"):
        assert_image(out / f"{name}.png")
        assert f"({name}.png)" in report.read_text()
    assert {"table.md", "table.tex", "table.csv", "table.html", "table-standalone.tex"} <= {
        p.name for p in out.iterdir()}
    # --no-plots: report.md is rewritten with the new table, and links no figures it did not draw
    put(Store(runs, "mnist"), "dafl", 0, best=0.5)
    text = suite_report(suite, runs, figures_too=False).read_text()
    assert "| DAFL | 134K | 0.500 (n=1) |" in text and ".png)" not in text


def test_plots_cover_every_stored_method(golden):
    """`run --methods dfad` ends with a report: its figures still show the methods already in the store."""
    suite, runs = golden
    only_dfad = load_suite(str(runs.parent / "mnist.yaml"), "paper", [], ["dfad"])
    assert list(only_dfad.methods) == ["dfad"]
    ms = plots.stored_methods(only_dfad, runs)
    assert {"kd_ori", "dfad", "zskt"} <= set(ms) and "teacher" not in ms
    assert ms.index("kd_ori") < ms.index("dfad") < ms.index("zskt")  # the table's order


def test_band_against_wall_time():
    """Seeds that ran at different speeds: x is their mean wall time per evaluation, y their mean accuracy."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame({"iteration": [50, 100, 50, 100], "seed": [0, 0, 1, 1], "test_acc": [0.5, 0.7, 0.6, 0.9],
                       "elapsed_s": [60.0, 120.0, 180.0, 360.0]})
    fig, ax = plt.subplots()
    line = plots.band(ax, df, "test_acc", "DFAD", x="minutes")
    assert list(line.get_xdata()) == [2.0, 4.0]
    assert list(line.get_ydata()) == pytest.approx([0.55, 0.8])
    assert list(plots.band(ax, df, "test_acc", "DFAD").get_xdata()) == [50, 100]
    plt.close(fig)


@pytest.mark.skipif(not shutil.which("pdflatex"), reason="pdflatex not installed (see docs/reports.md)")
def test_latex_compiles(golden, tmp_path):
    suite, runs = golden
    compiles(tmp_path, standalone(to_latex(build_table([suite], ["mnist"], runs), "under")))
    compiles(tmp_path, standalone(to_latex(build_table([suite], ["mnist"], runs), "delta")))


def compiles(where, document: str):
    """pdflatex the document when pdflatex is installed; the golden strings are checked either way."""
    if not shutil.which("pdflatex"):
        return
    (where / "t.tex").write_text(document)
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=where,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    assert (where / "t.pdf").read_bytes()[:5] == b"%PDF-"


def test_cli_paper_table_and_formats(golden):
    _, runs = golden
    r = CliRunner().invoke(app, ["report", "--paper-table", "cls", "--runs-dir", str(runs), "--format", "latex"])
    assert r.exit_code == 0, r.output
    # Caltech101 has a suite but no runs in this store: its column is there, n/a, with a footnote
    assert r"\multicolumn{2}{c}{Caltech101}" in r.output and "not run" in r.output
    assert r"DFAD & 134K & \bfseries 0.983 $\pm$ 0.002" in r.output
    assert (runs / "report" / "paper-table-cls-standalone.tex").is_file()
    rows = (runs / "report" / "paper-table-cls.csv").read_text().splitlines()
    assert rows[0].startswith("method,label,group,dataset,status,mean,std,n")
    bad = CliRunner().invoke(app, ["report", "--paper-table", "xyz", "--runs-dir", str(runs)])
    assert bad.exit_code == 2 and "--paper-table 'xyz'" in bad.output
    assert "the paper's numbers only" not in r.output
    # a store with no run of any of the table's suites: the paper's numbers, and a warning saying so
    empty = CliRunner().invoke(app, ["report", "--paper-table", "cls", "--runs-dir", str(runs / "nothing")])
    assert empty.exit_code == 0 and "the table holds the paper's numbers only" in empty.output, empty.output



def test_runs_that_cannot_share_a_cell_are_not_averaged(golden):
    """Seeds of one method made with different configs are n/a with the key that differs; a finished run without
    a number, an unreadable summary and an interrupted run are footnoted; none of them is counted in n."""
    import yaml

    suite, runs = golden
    store = Store(runs, "mnist")
    for seed in (0, 1, 2):
        cfg = {**suite.run_config("dfad", seed), "runtime": {"precision": "auto", "threads": seed}}  # speed only
        if seed == 2:
            cfg["budget"] = {**cfg["budget"], "iterations": 300}
        store.run("dfad", seed).config.write_text(yaml.safe_dump(cfg))
    put(store, "dafl", 0, best=0.9), put(store, "dafl", 2, best=0.8)
    write_json(store.run("dafl", 1).summary_path, {"status": "done"})  # done, but no best_acc
    store.run("dafl", 2).summary_path.write_text('{"status": "do')  # truncated
    put(store, "kd_unr", 0, "interrupted")
    md = to_markdown(build_table([suite], ["mnist"], runs))
    assert "| DFAD | 134K | n/a<sup>" in md
    assert "not averaged: seed 0 and seed 2 were run with different configs (budget.iterations differs)" in md
    assert "| DAFL | 134K | 0.900 (n=1)<sup>" in md
    assert "2 of 3 seeds did not finish: summary.json has no best_acc" in md
    assert "| KD-UNR | 134K | n/a<sup>" in md and "not finished: seed 0 interrupted (run the suite again to resume it)" in md
    store.run("dfad", 2).config.write_text(yaml.safe_dump({**suite.run_config("dfad", 2), "runtime": {}}))
    assert "| DFAD | 134K | **0.983 ± 0.002** |" in to_markdown(build_table([suite], ["mnist"], runs))


def test_two_suites_on_one_dataset_get_a_column_each(golden, tmp_path):
    suite, runs = golden
    other = tmp_path / "mnist-b.yaml"
    other.write_text(SUITE)
    put(Store(runs, "mnist-b"), "dfad", 0, best=0.5)
    md = to_markdown(build_table([suite, load_suite(str(other), "paper")], ["mnist", "mnist"], runs))
    assert "MNIST (mnist) Acc." in md and "MNIST (mnist-b) Acc." in md
    assert "| DFAD | 134K | **0.983 ± 0.002** | 134K | **0.500 (n=1)** |" in md
    import pytest

    from harness.errors import HarnessError
    with pytest.raises(HarnessError, match="a suite is named twice"):
        build_table([suite, suite], ["mnist", "mnist"], runs)


def test_segmentation_curves_keep_their_metric_column(golden):
    """The loop writes `metric` (miou) beside the numbers of dense tasks: a text column is not an unreadable file."""
    from reports.collect import curves

    suite, runs = golden
    rd = Store(runs, "mnist").run("dfad", 0)
    rd.metrics.write_text("iteration,test_acc,elapsed_s,loss_S,metric\n50,0.4,1.0,0.5,miou\n100,0.5,2.0,0.3,miou\n")
    c = curves(runs, "mnist", "dfad")
    assert sorted(c[c["seed"] == 0]["test_acc"]) == [0.4, 0.5] and set(c["seed"]) == {0, 1, 2}
    rd.metrics.write_text("iteration,test_acc\n50,abc\n")  # a number that is not one: that run is left out
    assert set(curves(runs, "mnist", "dfad")["seed"]) == {1, 2}


def test_caption_names_the_profiles_the_runs_were_made_with(golden):
    suite, runs = golden
    assert build_table([suite], ["mnist"], runs).caption.endswith("profile: paper.")
    put(Store(runs, "mnist"), "dafl", 0, best=0.5, profile="smoke")
    assert "profiles: paper, smoke (mixed: each run's summary.json says which)" in \
        build_table([suite], ["mnist"], runs).caption


def test_mixed_classification_and_segmentation_columns_name_their_measures(golden):
    """Each column says what its cells measure: accuracy for MNIST, mIoU for CamVid, and the caption says both."""
    suite, runs = golden
    camvid = load_suite("camvid", "smoke")
    put(Store(runs, camvid.name), "dfad", 0, best=0.41)
    t = build_table([suite, camvid], ["mnist", "camvid"], runs)
    md = to_markdown(t)
    assert "| Method | MNIST FLOPs | MNIST Acc. | CamVid FLOPs | CamVid mIoU |" in md
    assert t.caption.startswith("Test accuracy (mIoU for segmentation), the best of each run's evaluations")
    seg = build_table([camvid], ["camvid"], runs)
    assert seg.caption.startswith("mIoU, the best") and "one seed per cell" in seg.caption
    assert "| CamVid mIoU |" in to_markdown(seg)


def test_paper_tables_list_later_methods_only_where_a_suite_has_them(golden):
    """The segmentation table (the paper's Table 3) has no ZSKT/DFQ rows: no segmentation suite runs them."""
    suite, runs = golden
    camvid = load_suite("camvid", "smoke")
    put(Store(runs, camvid.name), "dfad", 0, best=0.41)
    seg = build_table([camvid, None], ["camvid", "nyuv2"], runs, paper_rows=True)
    assert seg.rows == ["teacher", "kd_ori", "kd_rel", "kd_unr", "random", "dafl", "dfad"]
    cls = build_table([suite], ["mnist"], runs, paper_rows=True)  # the MNIST store has ZSKT runs
    assert "zskt" in cls.rows and "dfq" not in cls.rows and "kd_rel" in cls.rows


def test_variants_of_a_method_are_labelled_after_it(tmp_path):
    """The ablation suite's own table and plots name dfad_mse "DFAD (MSE)", not its raw label."""
    path = tmp_path / "ablation-loss.yaml"
    path.write_text(ABLATION)
    suite = load_suite(str(path), "paper")
    store = Store(tmp_path / "runs", suite.name)
    put(store, "dfad_mae", 0, best=0.98), put(store, "dfad_mse", 0, best=0.95)
    md = to_markdown(build_table([suite], ["mnist"], tmp_path / "runs"))
    assert "| DFAD (MAE) | 134K | **0.980** |" in md and "| DFAD (MSE) | 134K | 0.950 |" in md
    assert "dfad_m" not in md.split("**")[2]  # the rows, after the caption
    from reports.collect import label
    assert label("dfad_mse", suite) == "DFAD (MSE)" and label("dfad_mse") == "dfad_mse"
    # the loss shown is the variant's own; other variants keep the rest of their name
    odd = load_suite(str(path), "paper", ["methods.dfad_kld.loss=mse", "methods.dafl_mse={method: dafl}",
                                          "methods.wide={method: dfad, ngf: 128}"])
    assert [label(m, odd) for m in ("dfad_kld", "dafl_mse", "wide", "dfad")] == [
        "DFAD (kld)", "DAFL (mse)", "DFAD (wide)", "DFAD"]


def test_ablation_over_a_segmentation_suite_says_miou(tmp_path):
    camvid = load_suite("camvid", "smoke", ["methods={dfad_mae: {method: dfad, loss: mae}, "
                                            "dfad_mse: {method: dfad, loss: mse}}"])
    put(Store(tmp_path, camvid.name), "dfad_mae", 0, best=0.4)
    t = ablation_table([camvid], tmp_path)
    assert "| Loss | CamVid mIoU |" in to_markdown(t) and "the loss: mIoU, the best" in t.caption


def test_ablation_across_suites_on_one_dataset_and_repeated_losses(golden, tmp_path):
    """Two suites on MNIST get a column each; a suite with two MAE variants gets a row for each, named; the
    curves skip nothing silently and --no-plots writes none."""
    suite, runs = golden
    path = tmp_path / "ablation-loss.yaml"
    path.write_text(ABLATION)
    abl = load_suite(str(path), "paper", ["methods.dfad_wide={method: dfad, loss: mae, ngf: 8}"])
    store = Store(runs, abl.name)
    put(store, "dfad_mae", 0, best=0.98), put(store, "dfad_wide", 0, best=0.97), put(store, "dfad_mse", 0, best=0.9)
    md = to_markdown(ablation_table([suite, abl], runs))
    assert "| Loss | MNIST (mnist) Acc. | MNIST (ablation-loss) Acc. |" in md
    assert "| MAE (dfad) | **0.983 ± 0.002** | n/a<sup>a</sup> |" in md
    assert "| MAE (dfad_mae) | n/a<sup>a</sup> | **0.980 (n=1)** |" in md
    assert "| MAE (dfad_wide) | n/a<sup>a</sup> | 0.970 (n=1) |" in md and "| MSE | n/a<sup>a</sup> | 0.900 (n=1) |" in md
    assert_image(plots.ablation([suite, abl], runs, tmp_path / "out"))
    r = CliRunner().invoke(app, ["report", "mnist", str(path), "--ablation", "--no-plots", "--runs-dir", str(runs)])
    assert r.exit_code == 0, r.output
    assert (runs / "report" / "ablation-mnist+ablation-loss.md").is_file()
    assert not list((runs / "report").glob("*curves*"))


def test_variants_sit_with_their_method_whichever_suite_comes_first(golden, tmp_path):
    suite, runs = golden
    path = tmp_path / "ablation-loss.yaml"
    path.write_text(ABLATION)
    abl = load_suite(str(path), "paper")
    put(Store(runs, abl.name), "dfad_mse", 0, best=0.9)
    t = build_table([suite, abl], ["mnist", "mnist"], runs)
    assert t.groups["dfad_mse"] == "free" and t.rows.index("dfad_mse") < t.rows.index("zskt")


def test_curves_do_not_average_seeds_the_table_refuses_to(golden, capsys):
    import yaml

    from reports.collect import curves

    suite, runs = golden
    store = Store(runs, "mnist")
    for seed in (0, 1, 2):
        cfg = suite.run_config("dfad", seed)
        if seed == 2:
            cfg["params"] = {**cfg["params"], "lr_S": 0.05}
        store.run("dfad", seed).config.write_text(yaml.safe_dump(cfg))
    assert curves(runs, "mnist", "dfad").empty
    assert "mnist/dfad not plotted: not averaged: seed 0 and seed 2" in capsys.readouterr().err
    assert set(curves(runs, "mnist", "kd_ori")["seed"]) == {0, 1, 2}


def test_latex_keeps_double_hyphens_and_angle_brackets():
    """`--runs-dir` in a footnote stays two hyphens (not an en dash); < and > are not OT1's inverted marks."""
    from reports.latex import escape

    assert escape("--runs-dir ---x <class>") == r"-{}-runs-dir -{}-{}-x \textless{}class\textgreater{}"


def test_a_summary_that_disagrees_with_its_evaluations_is_named(golden, capsys):
    """A best_acc edited by hand (or a summary copied from another run) would go into a paper table unchecked;
    the report names the run and both numbers."""
    import json

    from reports import collect

    suite, runs = golden
    collect._warned.clear()
    build_table([suite], ["mnist"], runs)
    assert "is not what metrics.csv" not in capsys.readouterr().err  # the store as written: consistent
    p = runs / "mnist" / "dfad" / "seed-1" / "summary.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "best_acc": 0.999}))
    build_table([suite], ["mnist"], runs)
    err = capsys.readouterr().err
    assert f"warning: {p.parent}: summary.json's best_acc 0.9990 is not what metrics.csv's evaluations give " \
           "(0.9830); the table shows summary.json's" in err


def test_teacher_flops_are_the_recorded_teachers_whatever_profile_is_loaded(tmp_path):
    """A store made with the smoke profile, reported with --profile quick: the Teacher row's FLOPs are those of the
    teacher its summary records (model and kwargs), not of the quick profile's teacher (1.30G against 10.4M on
    CamVid)."""
    from harness.data import get_dataset
    from harness.models import build_model, count_macs, human_macs
    from reports.table import teacher_flops

    smoke, quick = load_suite("camvid", "smoke"), load_suite("camvid", "quick")
    assert smoke.teacher.model != quick.teacher.model
    spec = get_dataset("camvid")
    own = human_macs(count_macs(build_model(smoke.teacher.model.name, num_classes=spec.num_classes,
                                            in_channels=3, **smoke.teacher.model.kwargs), spec.input_shape))
    for source in ("trained", "checkpoint"):
        summary = {"test_acc": 0.03, "source": source, "dataset": "camvid",
                   "model": smoke.teacher.model.model_dump(mode="json")}
        assert teacher_flops(quick, summary) == own
    # a checkpoint recorded by its model's name only (before the kwargs were recorded): no guess
    assert teacher_flops(quick, {"test_acc": 0.03, "source": "checkpoint", "model": smoke.teacher.model.name}) == ""


def test_a_method_the_paper_reports_as_failed_says_so_under_ours(tmp_path):
    """Table 2: DAFL FAILED on Caltech101; the paper row under ours says FAILED (no Δ against it), and the row is
    there even when the profile did not run DAFL."""
    from reports.markdown import to_markdown
    from reports.table import build_table

    _, suite, store = stored_suite(
        tmp_path, "caltech101", SUITE.replace("paper: {teacher: 0.989, kd_ori: 0.988, kd_unr: 0.957, dafl: 0.981, "
                                              "dfad: 0.983}", "paper: {teacher: 0.766, dafl: FAILED, dfad: 0.735}"), 0.7)
    put(store, "dfad", 0, best=0.6)
    t = build_table([suite], ["caltech101"], tmp_path / "runs")
    lines = to_markdown(t, "under").splitlines()
    dafl = next(i for i, x in enumerate(lines) if x.startswith("| DAFL"))
    assert lines[dafl + 1].startswith("| *paper*") and "FAILED" in lines[dafl + 1], lines
    delta = to_markdown(t, "delta").splitlines()
    assert next(x for x in delta if x.startswith("| DAFL")).endswith("|  |"), delta  # no difference with FAILED
    assert "0.135" in next(x for x in delta if x.startswith("| DFAD")), delta


def test_a_paper_row_the_suite_cannot_run_says_why(tmp_path):
    """KD-REL on CamVid needs Cityscapes: the footnote says that (the suite's `unavailable`), not a bare "not run";
    a row marked so that does not exist in `paper` is a config error; the mark does not change runs' configs."""
    from harness.errors import HarnessError

    path, suite, store = stored_suite(tmp_path, "camvid", SUITE + "unavailable: {kd_unr: VOC2012 is not here}\n", 0.7)
    put(store, "dfad", 0, best=0.6)
    notes = "\n".join(x for x in to_markdown(build_table([suite], ["camvid"], tmp_path / "runs")).splitlines()
                      if x.startswith("<sup>"))
    assert "not run: VOC2012 is not here" in notes, notes
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "camvid.yaml").write_text(SUITE)
    assert suite.run_config("dfad", 0) == load_suite(str(tmp_path / "plain" / "camvid.yaml"), "paper").run_config("dfad", 0)
    # nor does a paper value (a corrected or added number leaves the finished runs finished)
    edited = load_suite(str(path), "paper").model_dump()
    edited["paper"] = {**edited["paper"], "dfad": [0.5, 0.01], "zskt": 0.4}
    assert Suite.model_validate(edited).run_config("dfad", 0) == suite.run_config("dfad", 0)
    path.write_text(SUITE + "unavailable: {kd_rell: typo}\n")
    with pytest.raises(HarnessError, match="kd_rell.*not a row of `paper`"):
        load_suite(str(path), "paper")


def test_the_paper_row_shows_the_papers_spread_where_it_gives_one(tmp_path):
    """Table 2 gives DFAD on MNIST as 0.983 ± 0.002: the paper row says so in every format; Δ is against the mean;
    the CSV keeps both numbers; a negative std is a config error."""
    from harness.errors import HarnessError

    path, suite, store = stored_suite(tmp_path, "mnist", SUITE.replace("dfad: 0.983}", "dfad: [0.983, 0.002]}"), 0.99)
    for seed, acc in ((0, 0.97), (1, 0.98)):
        put(store, "dfad", seed, best=acc)
    t = build_table([suite], ["mnist"], tmp_path / "runs")
    md = to_markdown(t, "under").splitlines()
    dfad = next(i for i, x in enumerate(md) if x.startswith("| DFAD"))
    assert "0.983 ± 0.002" in md[dfad + 1], md
    assert next(x for x in to_markdown(t, "delta").splitlines() if x.startswith("| DFAD")).endswith("| -0.008 |")
    assert r"0.983 $\pm$ 0.002" in to_latex(t, "under")
    row = tidy(t).set_index("method").loc["dfad"]
    assert (row["paper"], row["paper_std"]) == (0.983, 0.002)
    path.write_text(SUITE.replace("dfad: 0.983}", "dfad: [0.983, -0.002]}"))
    with pytest.raises(HarnessError, match=r"paper.dfad: \[mean, std\] with std >= 0"):
        load_suite(str(path), "paper")


def test_a_suite_without_runs_adds_no_profile_to_the_caption(golden, tmp_path):
    """`report mnist nyuv2` where nyuv2's folder holds no run (a run that stopped for want of data leaves it):
    the caption names the profiles of the runs shown, not a guess from the suite loaded for the empty one."""
    from reports.table import build_table

    suite, runs = golden
    other = tmp_path / "other.yaml"
    other.write_text(SUITE + "profiles: {quick: {budget: {iterations: 10, eval_every: 5}}}\n")
    empty = load_suite(str(other), "quick")
    (runs / "other").mkdir()
    t = build_table([suite, empty], ["mnist", "other"], runs)
    assert t.caption.endswith("profile: paper."), t.caption


def test_a_report_over_several_suites_shows_one_without_runs_as_n_a(golden):
    """`report mnist camvid` where camvid has not run: its column is n/a with a warning (as in --paper-table), not
    an error that prints nothing; only when no suite has runs is it an error."""
    _, runs = golden
    suite_file = str(runs.parent / "mnist.yaml")
    r = CliRunner().invoke(app, ["report", suite_file, "camvid", "--runs-dir", str(runs), "--no-plots"])
    assert r.exit_code == 0, r.output
    assert f"warning: no runs of suite(s) 'camvid' under {runs}: n/a" in r.output
    assert "| Method | MNIST FLOPs | MNIST Acc. | CamVid FLOPs | CamVid mIoU |" in r.output
    bad = CliRunner().invoke(app, ["report", "camvid", "nyuv2", "--runs-dir", str(runs)])
    assert bad.exit_code == 2 and "no runs of suites 'camvid', 'nyuv2'" in bad.output, bad.output
    # an empty folder (left by a run that stopped for want of data) has no runs either
    (runs / "camvid").mkdir()
    (runs / "camvid" / "dfad").mkdir()
    empty = CliRunner().invoke(app, ["report", "camvid", "--runs-dir", str(runs)])
    assert empty.exit_code == 2 and f"no runs of suite 'camvid' under {runs}" in empty.output, empty.output


def test_the_ablation_report_of_the_ablation_suite_is_not_named_twice(tmp_path):
    path = tmp_path / "ablation-loss.yaml"
    path.write_text(ABLATION)
    store = Store(tmp_path / "runs", "ablation-loss")
    for m, a in (("dfad_mae", 0.98), ("dfad_mse", 0.95), ("dfad_kld", 0.9)):
        put(store, m, 0, best=a)
    r = CliRunner().invoke(app, ["report", str(path), "--ablation", "--no-plots", "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "report" / "ablation-loss.md").is_file(), r.output
    assert not list((tmp_path / "runs" / "report").glob("ablation-ablation*"))


def test_paper_rows_show_the_papers_flops_beside_ours(tmp_path):
    """`paper_flops` puts the paper's MACs in its rows' FLOPs cells (the teacher's under Teacher, the student's under
    the methods), in every format and the CSV; without it, and in a row the paper lacks, they stay empty. It is
    report data: a run's identity ignores it. A bad value is a config error naming it."""
    from harness.errors import HarnessError

    path, suite, store = stored_suite(tmp_path, "mnist", SUITE + "paper_flops: {teacher: 4.33e5, student: 1.39e5}\n",
                                      0.99, macs=417000)
    put(store, "dfad", 0, best=0.97)
    put(store, "zskt", 0, best=0.5)  # a row the paper does not have
    t = build_table([suite], ["mnist"], tmp_path / "runs")
    md = to_markdown(t, "under").splitlines()
    teacher, dfad = (next(i for i, x in enumerate(md) if x.startswith(f"| {r}")) for r in ("Teacher", "DFAD"))
    assert md[teacher] == "| Teacher | 417K | 0.990 |" and md[teacher + 1] == "| *paper* | *433K* | *0.989* |"
    assert md[dfad].startswith("| DFAD | 134K |") and md[dfad + 1] == "| *paper* | *139K* | *0.983* |"
    assert "a paper row's, the paper's" in t.caption
    assert r"\itshape 433K" in to_latex(t, "under") and ">139K</td>" in to_html(t, "under")
    csv = tidy(t).set_index("method")["paper_flops"]
    assert (csv["teacher"], csv["dfad"], csv["zskt"]) == ("433K", "139K", "")
    assert suite.run_config("dfad", 0) == load_suite(str(path), "paper", ["paper_flops.student=1"]).run_config("dfad", 0)
    plain = tmp_path / "plain" / "mnist.yaml"
    plain.parent.mkdir()
    plain.write_text(SUITE)
    t = build_table([load_suite(str(plain), "paper")], ["mnist"], tmp_path / "runs")
    assert "| *paper* |  | *0.989* |" in to_markdown(t, "under") and "paper row's" not in t.caption
    for bad, says in (("{student: -1}", "paper_flops.student"), ("{studnet: 1}", "studnet")):
        path.write_text(SUITE + f"paper_flops: {bad}\n")
        with pytest.raises(HarnessError, match=says):
            load_suite(str(path), "paper")


def test_the_ablation_table_shows_the_papers_value_of_its_variant(tmp_path):
    """ablation-loss.yaml gives `dfad_mae` Table 2's DFAD value: the ablation's MAE row has it under ours and in Δ
    (the Δ column was always empty)."""
    path = tmp_path / "ablation-loss.yaml"
    path.write_text(ABLATION + "paper: {dfad_mae: [0.983, 0.002]}\n")
    store = Store(tmp_path / "runs", "ablation-loss")
    for m, a in (("dfad_mae", 0.98), ("dfad_mse", 0.95), ("dfad_kld", 0.9)):
        put(store, m, 0, best=a)
    t = ablation_table([load_suite(str(path), "paper")], tmp_path / "runs")
    under = to_markdown(t, "under").splitlines()
    mae = next(i for i, x in enumerate(under) if x.startswith("| MAE"))
    assert "0.983 ± 0.002" in under[mae + 1], under
    delta = to_markdown(t, "delta").splitlines()
    assert next(x for x in delta if x.startswith("| MAE")).endswith("| -0.003 |"), delta
    assert next(x for x in delta if x.startswith("| MSE")).endswith("|  |"), delta  # the paper has no MSE value


def test_latex_escapes_every_special_character():
    """A failure reason or label with % would comment out the rest of its line, & would break the tabular."""
    from reports.latex import escape

    assert escape("50% of a&b #1 $x$ {y}_z ~^\\") == (r"50\% of a\&b \#1 \$x\$ \{y\}\_z "
                                                      r"\textasciitilde{}\textasciicircum{}\textbackslash{}")


def test_cells_that_print_the_same_are_bold_together(tmp_path):
    """Bold marks the best data-free result at the shown precision: 0.9751 and 0.9754 both read 0.975."""
    _, suite, store = stored_suite(tmp_path, "mnist", SUITE, 0.989)
    put(store, "dfad", 0, best=0.9751)
    put(store, "zskt", 0, best=0.9754)
    put(store, "dafl", 0, best=0.9744)
    put(store, "kd_ori", 0, best=0.99)  # data-driven: never bold
    t = build_table([suite], ["mnist"], tmp_path / "runs")
    assert {r for r, _ in t.bold()} == {"dfad", "zskt"}


def test_a_report_finds_the_runs_profile_where_their_summaries_cannot_be_read(tmp_path):
    """The report's titles name the profile the runs were made with: from a summary.json, else from the run's
    config.yaml (an unreadable summary once left the default profile's name on a table of smoke runs)."""
    from harness.cli import _stored_profile

    rd = tmp_path / "mnist" / "dfad" / "seed-0"
    rd.mkdir(parents=True)
    (rd / "summary.json").write_text("{bad")
    (rd / "config.yaml").write_text("profile: smoke\nseed: 0\n")
    assert _stored_profile("mnist", tmp_path) == "smoke"
    (rd / "summary.json").write_text('{"profile": "quick", "status": "done"}')
    assert _stored_profile("mnist", tmp_path) == "quick"  # the summary first
    (rd / "config.yaml").unlink()
    (rd / "summary.json").unlink()
    assert _stored_profile("mnist", tmp_path) is None


@pytest.mark.parametrize("shape, nrow, pad_value", [((5, 1, 4, 3), 2, 1.0), ((16, 3, 8, 8), 8, 0.0),
                                                     ((3, 3, 2, 5), 8, 0.5), ((1, 1, 6, 6), 4, 1.0)])
def test_image_grid_lays_images_out_as_torchvision_does(shape, nrow, pad_value):
    """The sample grids (W&B, report figures) are tiled without importing torchvision: same pixels as make_grid."""
    from torchvision.utils import make_grid

    from harness.data import image_grid

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ours = image_grid(x, nrow=nrow, padding=2, pad_value=pad_value)
    theirs = make_grid(x, nrow=nrow, padding=2, pad_value=pad_value)  # 1 channel comes back as 3 equal ones
    assert torch.equal(ours, theirs[:shape[1]]) and (shape[1] == 3 or torch.equal(theirs[0], theirs[2]))
