import pytest
import yaml

from harness.config import list_suites, load_suite, parse_override, suite_path
from harness.errors import HarnessError

# Official script defaults (../shared/reference/dfad-paper.md, "Hyperparameters").
OFFICIAL = {
    "mnist": dict(batch_size=512, iterations=2000, lr_S=0.01, weight_decay=1e-4, lr_G=1e-3, nz=100,
                  schedule="none", milestones=[]),
    "cifar10": dict(batch_size=256, iterations=25000, lr_S=0.1, weight_decay=5e-4, lr_G=1e-3, nz=256,
                    schedule="multistep", milestones=[0.2, 0.4]),
}


@pytest.mark.parametrize("suite", list_suites())
def test_every_suite_and_profile_validates(suite):
    from harness.config import read_yaml, suite_path
    from harness.runner import check_models

    for profile in ["paper", *(read_yaml(suite_path(suite)).get("profiles") or {})]:
        s = load_suite(suite, profile)
        assert s.profile == profile and s.methods
        check_models(s)  # its teacher and student build and take the dataset's input (what `validate` checks)


@pytest.mark.parametrize("suite", sorted(OFFICIAL))
def test_paper_profile_carries_official_hyperparameters(suite):
    s = load_suite(suite, "paper")
    ref = OFFICIAL[suite]
    dfad = s.method_params("dfad")
    assert s.budget.iterations == ref["iterations"]
    assert s.budget.eval_every == 50
    assert dfad.k == 5 and dfad.loss == "mae" and dfad.gen_objective == "neg"
    assert dfad.momentum == 0.9
    for key in ("batch_size", "lr_S", "weight_decay", "lr_G", "nz", "schedule", "milestones"):
        assert getattr(dfad, key) == ref[key], key
    if suite == "cifar10":
        assert dfad.gamma == 0.1
        assert s.teacher.model.name == "resnet34_8x" and s.student.name == "resnet18_8x"
    else:
        assert s.teacher.model.name == "lenet5" and s.student.name == "lenet5_half"


def test_profile_overlays_and_overrides():
    s = load_suite("mnist", "quick", ["budget.iterations=123", "methods.dfad.lr_G=0.5", "teacher.checkpoint=/x.pt"])
    assert s.budget.iterations == 123
    assert s.method_params("dfad").lr_G == 0.5
    assert s.teacher.checkpoint == "/x.pt"
    assert load_suite("mnist", "paper").method_params("dfad").batch_size == 512


@pytest.mark.parametrize("override,fragment", [
    ("budget.iteratons=5", "budget.iteratons: unknown key"),
    ("budget.iterations=abc", "budget.iterations"),
    ("budget.iterations=0", "greater than 0"),
    ("methods.dfad.lr_S=-1", "methods.dfad.lr_S"),
    ("methods.dfad.batch_size=0", "methods.dfad.batch_size"),
    ("methods.dfad.bogus=1", "methods.dfad.bogus: unknown key"),
    ("methods.dfadd.lr_S=1", "did you mean 'dfad'"),
    ("dataset=mnits", "did you mean 'mnist'"),
    ("student.name=lenet", "unknown model"),
    ("noequals", "not key.path=value"),
    # YAML's true/false is not a number (pydantic alone reads `batch_size: true` as 1)
    ("methods.dfad.batch_size=true", "methods.dfad.batch_size: Value error, expected a number, not true/false"),
    ("budget.iterations=false", "budget.iterations: Value error, expected a number"),
    ("teacher.recipe.lr=true", "teacher.recipe.lr: Value error, expected a number"),
    ("runtime.threads=true", "runtime.threads: Value error, expected a number"),
    ("seeds=[0,true]", "seeds: Value error, expected numbers, not true/false"),
    ("methods.dfad.milestones=[true]", "methods.dfad.milestones: Value error, expected numbers"),
    # a teacher's multistep milestone past its last epoch would never be reached
    ("teacher.recipe={schedule: multistep, epochs: 10, milestones: [5, 20]}",
     "milestones [20] are not within this recipe's epochs (1 to 9"),
    ("teacher.recipe={schedule: multistep, epochs: 10, milestones: [10]}", "a decay at epoch 10 or later never happens"),
    ("methods.dfad.milestones=[0.5, 1.0]", "methods.dfad.milestones.1: Input should be less than 1"),
    ("paper.dfad=true", "paper: Value error, paper.dfad: a number, [mean, std] or FAILED (got True)"),
    # a quoted number is text: a whole number refuses it (a float keeps taking it: PyYAML reads 1e-3 as text)
    ("methods.dfad.batch_size='8'", "methods.dfad.batch_size: Value error, expected a whole number, not the string '8'"),
    ("seeds=[0, '1']", "seeds: Value error, expected a whole number, not the string '1'"),
    ("teacher.recipe.epochs='3'", "teacher.recipe.epochs: Value error, expected a whole number"),
    ("methods.kd_ori.data=nosuch", "methods.kd_ori.data: unknown dataset 'nosuch'"),
    ("dataset=camvid", "methods.kd_rel: no default data source for dataset 'camvid'; set methods.kd_rel.data"),
])
def test_bad_config_is_one_line_error_naming_it(override, fragment):
    with pytest.raises(HarnessError) as e:
        load_suite("mnist", "quick", [override])
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg
    key, loc = override.split("=")[0], (msg.split(": ") + [""])[1]
    if loc == key or loc.startswith(key + ".") or override in ("dataset=mnits", "student.name=lenet",
                                                               "methods.dfadd.lr_S=1"):
        assert msg.startswith(f"override {override}: "), msg  # the override is named, not the suite file


def test_an_override_for_a_method_outside_the_suite_is_refused_not_added_with_defaults():
    """`methods.dfad.lr_S=0.1` on the ablation suite (variants dfad_mae/mse/kld) once added a fourth method, DFAD
    with its built-in defaults, to every run and report of the suite; a method outside the suite is run with
    --methods, and then its overrides apply."""
    with pytest.raises(HarnessError) as e:
        load_suite("ablation-loss", "smoke", ["methods.dfad.lr_S=0.1"])
    assert str(e.value).startswith("override methods.dfad.lr_S=0.1: suite ablation-loss has no method 'dfad' "
                                   "(its methods: dfad_mae, dfad_mse, dfad_kld); did you mean"), e.value
    with pytest.raises(HarnessError, match=r"suite camvid has no method 'zskt' .*--methods zskt"):
        load_suite("camvid", "smoke", ["methods.zskt.lr_S=0.1"])
    s = load_suite("camvid", "smoke", ["methods.zskt.lr_S=0.1"], methods=["zskt"])
    assert s.method_names() == ["zskt"] and s.method_params("zskt").lr_S == 0.1
    assert load_suite("mnist", "smoke", ["methods.zskt.lr_S=0.1"]).method_params("zskt").lr_S == 0.1  # in the suite


@pytest.mark.parametrize("key,shown", [("\n", "'\\n'"), ("a b", "'a b'"), ("", "''"), ("x.y", "'x.y'")])
def test_unknown_key_that_is_not_a_plain_word_is_quoted_on_one_line(tmp_path, key, shown):
    # found by tests/test_fuzz_config.py: a YAML key "\n" made a two-line error
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump({**yaml.safe_load(suite_path("mnist").read_text()), key: 1}))
    with pytest.raises(HarnessError) as e:
        load_suite(str(p))
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(f"{shown}: unknown key"), msg


def test_unknown_suite_and_profile_suggest():
    with pytest.raises(HarnessError, match="did you mean 'mnist'"):
        load_suite("mnsit")
    with pytest.raises(HarnessError, match="did you mean 'quick'"):
        load_suite("mnist", "quik")


def test_a_profile_named_by_a_number_is_a_one_line_error(tmp_path):
    """Found by the config fuzzer: YAML reads `0:` as an int, and the suggestion for an unknown profile compared it."""
    p = tmp_path / "numbered.yaml"
    p.write_text(yaml.safe_dump({**yaml.safe_load(suite_path("mnist").read_text()), "profiles": {0: None}}))
    with pytest.raises(HarnessError, match="unknown profile 'quick'; choose from paper, 0"):
        load_suite(str(p), "quick")


def test_malformed_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("dataset: mnist\n  teacher: [\n")
    with pytest.raises(HarnessError, match="malformed YAML"):
        load_suite(str(p))


def test_override_values_are_typed():
    assert parse_override("a.b=0.5") == (["a", "b"], 0.5)
    assert parse_override("a=[1,2]") == (["a"], [1, 2])
    assert parse_override("a=hello") == (["a"], "hello")


@pytest.mark.parametrize("value,expected", [("off", "off"), ("on", "on"), ("'off'", "off"), ("auto", "auto")])
def test_channels_last_accepts_bare_on_off(value, expected):
    # YAML reads a bare on/off as a boolean; `make parity-mnist` passes runtime.channels_last=off
    assert load_suite("mnist", "quick", [f"runtime.channels_last={value}"]).runtime.channels_last == expected


def test_channels_last_rejects_other_values():
    with pytest.raises(HarnessError, match="runtime.channels_last"):
        load_suite("mnist", "quick", ["runtime.channels_last=sometimes"])


def test_a_method_left_out_need_not_find_its_data():
    """KD-REL has no default source for CamVid: an error when it runs, not when --methods leaves it out."""
    assert load_suite("mnist", "quick", ["dataset=camvid"], methods=["dfad"]).method_names() == ["dfad"]
    with pytest.raises(HarnessError, match="methods.kd_rel: no default data source"):
        load_suite("mnist", "quick", ["dataset=camvid"], methods=["dfad", "kd_rel"])


def test_a_report_loads_a_suite_whose_methods_could_not_run_here():
    """Stores made before the data-source check (KD-REL failed at run time) can still be reported."""
    from harness.data import READING_STORED_RUNS

    token = READING_STORED_RUNS.set(True)
    try:
        assert "kd_rel" in load_suite("mnist", "quick", ["dataset=camvid"]).methods
    finally:
        READING_STORED_RUNS.reset(token)


def test_booleans_stay_valid_where_a_setting_is_one():
    s = load_suite("mnist", "quick", ["runtime.compile=true", "runtime.channels_last=off", "runtime.deterministic=false",
                                      "teacher.recipe={schedule: cosine, epochs: 2, milestones: [5]}"])
    assert s.runtime.compile is True and s.runtime.channels_last == "off" and s.teacher.recipe.milestones == [5]


def test_a_section_check_names_the_file_and_the_overrides_in_it():
    """milestones from the file, epochs from an override: both are to blame, and the message says so."""
    with pytest.raises(HarnessError) as e:
        load_suite("mnist", "paper", ["teacher.recipe.schedule=multistep", "teacher.recipe.milestones=[5]",
                                      "budget.iterations=10", "teacher.recipe.epochs=3"])
    assert str(e.value).startswith(f"{suite_path('mnist')} with override teacher.recipe.schedule=multistep, "
                                   "teacher.recipe.milestones=[5], teacher.recipe.epochs=3: teacher.recipe:")


def test_floats_written_as_yaml_reads_them_still_load():
    """PyYAML reads `1e-3` (no dot) as a string: float fields keep taking it; whole numbers as numbers load."""
    s = load_suite("mnist", "quick", ["methods.dfad.lr_S=1e-3", "teacher.recipe.lr=5e-2",
                                      "methods.dfad.batch_size=8"])
    assert s.method_params("dfad").lr_S == 1e-3 and s.teacher.recipe.lr == 5e-2
    assert s.method_params("dfad").batch_size == 8
    assert load_suite("mnist", "smoke", ["search.dfad.lr_S.low=1e-4"]).search["dfad"]["lr_S"].low == 1e-4


def test_methods_as_typed_select_the_suites_entries():
    """--methods DFAD or kd-ori runs the suite's `dfad` and `kd_ori` with the suite's settings, once each; a name the
    suite lacks is the registered method (its defaults), and an unknown one is refused."""
    from harness.config import load_suite

    suite = load_suite("mnist", "smoke")
    s = load_suite("mnist", "smoke", methods=["DFAD", "kd-ori", "dfad"])
    assert list(s.methods) == ["dfad", "kd_ori"]
    assert s.methods["dfad"] == suite.methods["dfad"] and s.methods["kd_ori"] == suite.methods["kd_ori"]
    assert list(load_suite("ablation-loss", "smoke", methods=["DFAD-MSE"]).methods) == ["dfad_mse"]
    assert list(load_suite("ablation-loss", "smoke", methods=["KD-ORI"]).methods) == ["kd_ori"]  # not in the suite
    with pytest.raises(HarnessError, match="did you mean 'dfad'"):
        load_suite("mnist", "smoke", methods=["dfda"])


def test_a_misspelt_required_key_is_named_as_the_mistake(tmp_path):
    """`budgt:` for `budget:` is an unknown key and a missing one: the message names the key as typed, with the
    one it resembles, not only "budget: Field required"."""
    from harness.config import load_suite

    f = tmp_path / "s.yaml"
    f.write_text("dataset: mnist\nteacher: {model: {name: lenet5}}\nstudent: {name: lenet5_half}\n"
                 "budgt: {iterations: 10, eval_every: 5}\nmethods: {dfad: {}}\n")
    with pytest.raises(HarnessError, match=r"budgt: unknown key; did you mean 'budget'\?"):
        load_suite(str(f))
