"""The config loader fuzzed with hypothesis: random YAML-ish text, random mutations of a real suite (dict
trees of random keys and values), random `key.path=value` overrides and --methods/--seeds lists. Whatever
comes in, load_suite / validate return a valid Suite or raise a one-line HarnessError, nothing else."""
import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.config import Suite, load_suite, read_yaml, suite_path, validate
from harness.errors import HarnessError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
BASE = read_yaml(suite_path("mnist"))
KEYS = ["name", "dataset", "teacher", "model", "recipe", "student", "budget", "iterations", "eval_every", "seeds",
        "methods", "dfad", "kd_ori", "method", "lr_S", "batch_size", "profiles", "smoke", "quick", "run_methods",
        "runtime", "device", "search", "low", "high", "choices", "checkpoint", "kwargs", "tracking", "wandb",
        "datasets", "folder", "size", "channels", "mean", "std", "augment"]
key = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none())
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=12), st.sampled_from(["mnist", "dfad", "lenet5", "nan", "-1", "[1", "{a: 1}"]))
tree = st.recursive(scalar, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(key, kids, max_size=5),
                    max_leaves=20)
path_part = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
yamlish = st.lists(st.sampled_from(list("abdfmn01-_.:{}[],'\"!&*#|>?%@ \n\t") + KEYS + ["\n  ", ": "]),
                   max_size=60).map("".join)


def check(fn, *a, **kw):
    try:
        out = fn(*a, **kw)
    except HarnessError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
        return None
    assert isinstance(out, Suite)
    return out


def mutate(doc: dict, path: list, value) -> dict:
    """`doc` with the node at `path` set to `value`, creating (or replacing) whatever is on the way."""
    doc = copy.deepcopy(doc)
    node = doc
    for p in path[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[path[-1]] = value
    return doc


@FUZZ
@given(text=yamlish, profile=st.sampled_from(["paper", "quick", "smoke", "nope"]))
def test_random_yaml_text(tmp_path_factory, text, profile):
    p = tmp_path_factory.mktemp("fuzz") / "suite.yaml"
    p.write_text(text)
    check(load_suite, str(p), profile)


@settings(FUZZ, max_examples=100)  # a file per example: the slowest
@given(path=st.lists(st.one_of(st.sampled_from(KEYS), key), min_size=1, max_size=4), value=tree,
       profile=st.sampled_from(["paper", "quick", "smoke"]))
def test_mutated_suite_file(tmp_path_factory, path, value, profile):
    p = tmp_path_factory.mktemp("fuzz") / "suite.yaml"
    p.write_text(yaml.safe_dump(mutate(BASE, path, value)))
    check(load_suite, str(p), profile)


@FUZZ
@given(raw=st.one_of(tree, st.dictionaries(key, tree, max_size=8)),
       path=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), value=tree)
def test_validate_random_trees(raw, path, value):
    if isinstance(raw, dict):
        check(validate, raw)
    smoke = {k: v for k, v in BASE.items() if k != "profiles"}
    check(validate, mutate(smoke, path, value))


@FUZZ
@given(overrides=st.lists(st.one_of(
    st.builds(lambda ks, v: ".".join(ks) + "=" + v, st.lists(path_part, min_size=1, max_size=4),
              st.one_of(st.text(max_size=12), scalar.map(lambda x: yaml.safe_dump(x).split("\n...")[0].strip()))),
    st.text(max_size=20)), max_size=4),
    methods=st.none() | st.lists(st.sampled_from(["dfad", "kd_ori", "dfda", "", "zskt"]) | st.text(max_size=5),
                                 max_size=3),
    seeds=st.none() | st.lists(st.integers(-5, 10**6), max_size=3))
def test_random_overrides(overrides, methods, seeds):
    check(load_suite, "mnist", "smoke", overrides, methods, seeds)
