"""Trainer configuration on OmegaConf structured configs: defaults, YAML + --set overrides of every field type,
clear errors naming the key, round trip through config.yaml and to_dict/from_dict, help text, the keys a resume
must keep."""
import dataclasses

import pytest

from clnscl.train.config import AugmentConfig, Config, ConfigError, describe, load_config, run_keys
from tests.support.processes import REPO

yaml = pytest.importorskip("yaml")


def test_defaults():
    c = load_config()
    assert c == Config()
    assert c.objectives == ["cl", "nscl", "supcon", "ce"] and c.anchor == "cl"
    assert (c.temperature, c.decoupled, c.batch_size, c.epochs) == (0.5, False, 256, 30)
    assert (c.optimizer, c.lr, c.lr_scaling, c.weight_decay, c.warmup_epochs) == ("sgd", 0.1, "none", 5e-4, 2)
    assert (c.sampler, c.seed, c.dataset, c.data_root, c.num_classes) == ("uniform", 0, "digits", None, None)
    assert (c.model, c.projector_dim, c.hidden_dim, c.eval_every, c.reference_size, c.knn_k) == \
        ("small_cnn", 64, 128, 20, None, 20)
    assert (c.out, c.device) == ("runs/default", "auto")
    assert c.augment == AugmentConfig() and c.augment.crop_scale == (0.6, 1.0)


def test_overrides_of_every_type():
    c = load_config(overrides=[
        "temperature=0.1",          # float
        "lr=1e-3",                  # float that YAML 1.1 reads as a string
        "weight_decay=0",           # int given to a float field
        "batch_size=128",           # int
        "epochs=20",                # int
        "decoupled=true",           # bool
        "optimizer=AdamW",          # choice, case-insensitive
        "num_classes=4",            # optional int
        "data_root=/tmp/data dir",  # optional str
        "out=0x10",                 # str keeps the text as typed
        "objectives=[cl, nscl]",    # list (YAML)
        "augment.rotation=5",       # nested
        "augment.crop_scale=[0.5, 1]",  # nested tuple
        "augment.padding_mode=border",
    ])
    assert c.temperature == 0.1 and c.lr == 1e-3 and c.weight_decay == 0.0 and isinstance(c.weight_decay, float)
    assert c.batch_size == 128 and c.epochs == 20 and isinstance(c.epochs, int)
    assert c.decoupled is True and c.optimizer == "adamw" and c.num_classes == 4
    assert c.data_root == "/tmp/data dir" and c.out == "0x10"
    assert c.objectives == ["cl", "nscl"]
    assert c.augment.rotation == 5.0 and c.augment.crop_scale == (0.5, 1.0) and c.augment.padding_mode == "border"
    # comma-separated lists, clearing an optional key, later overrides win, a whole section as a mapping
    c = load_config(overrides=["objectives=nscl,cl", "num_classes=5", "num_classes=null", "reference_size=~",
                               "augment={noise_std: 0, jitter_p: 0.5}", "decoupled=0", "snapshot_epochs=3",
                               "data_root=it's: here", "augment.crop_scale=0.5,1"])
    assert c.objectives == ["nscl", "cl"] and c.num_classes is None and c.reference_size is None
    assert c.augment.noise_std == 0.0 and c.augment.jitter_p == 0.5 and c.decoupled is False
    assert c.snapshot_epochs == [3] and c.data_root == "it's: here" and c.augment.crop_scale == (0.5, 1.0)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("temperature: 0.2\nweight_decay: 1e-6\nobjectives: [cl, supcon]\n"
                    "augment:\n  rotation: 0\n  crop_scale: [0.8, 1.0]\naugment.noise_std: 0.1\n")
    c = load_config(path, ["temperature=0.3"])
    assert c.temperature == 0.3 and c.weight_decay == 1e-6 and c.objectives == ["cl", "supcon"]
    assert c.augment.rotation == 0.0 and c.augment.crop_scale == (0.8, 1.0) and c.augment.noise_std == 0.1
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()


def test_save_round_trip_and_to_dict(tmp_path):
    c = load_config(overrides=["temperature=0.25", "objectives=[cl,ce]", "augment.crop_scale=[0.7,0.9]",
                               "num_classes=3", "out=runs/x"])
    written = c.save(tmp_path / "run")
    assert written == tmp_path / "run" / "config.yaml" and written.exists()
    assert load_config(written) == c
    d = c.to_dict()
    assert d["augment"]["crop_scale"] == [0.7, 0.9] and d["objectives"] == ["cl", "ce"]
    assert yaml.safe_load(yaml.safe_dump(d)) == d
    assert c.save(tmp_path / "other.yaml") == tmp_path / "other.yaml"


def test_scaled_lr():
    base = dict(lr=0.1, batch_size=1024)
    assert Config(**base, lr_scaling="none").scaled_lr() == pytest.approx(0.1)
    assert Config(**base, lr_scaling="linear").scaled_lr() == pytest.approx(0.4)
    assert Config(**base, lr_scaling="sqrt").scaled_lr() == pytest.approx(0.2)
    assert Config(**base, lr_scaling="fourth_root").scaled_lr() == pytest.approx(0.1 * 2 ** 0.5)


@pytest.mark.parametrize("override, key, extra", [
    ("temprature=0.1", "temprature", "did you mean 'temperature'"),
    ("rotation=3", "rotation", "did you mean 'augment.rotation'"),
    ("augment.rotaton=3", "augment.rotaton", "did you mean 'augment.rotation'"),
    ("lr.base=3", "lr.base", "valid keys: objectives"),
    ("augment=3", "augment", "augment.rotation"),
    ("optimizer=adam", "optimizer", "valid choices: sgd, adamw, lars"),
    ("model=vit", "model", "small_cnn, resnet18, resnet50"),
    ("lr_scaling=cubic", "lr_scaling", "none, linear, sqrt, fourth_root"),
    ("dataset=mnist", "dataset", "digits, cifar10, cifar100, imagefolder"),
    ("augment.padding_mode=wrap", "augment.padding_mode", "zeros, border, reflection"),
    ("objectives=[cl, simclr]", "objectives", "'simclr'"),
    ("objectives=[]", "objectives", "empty"),
    ("objectives=[cl, nscl, cl]", "objectives", "duplicate"),
    ("objectives=[ce, cl]", "objectives", "anchor"),
    ("batch_size=abc", "batch_size", "'abc'"),
    ("batch_size=12.5", "batch_size", "integer"),
    ("epochs=2e1", "epochs", "integer"),
    ("seed=true", "seed", "integer"),
    ("batch_size=1", "batch_size", ">= 2"),
    ("decoupled=maybe", "decoupled", "true or false"),
    ("temperature=0", "temperature", "> 0"),
    ("temperature=-1", "temperature", "> 0"),
    ("temperature=nan", "temperature", "finite"),
    ("temperature=[1]", "temperature", "number"),
    ("epochs=0", "epochs", ">= 1"),
    ("lr=0", "lr", "> 0"),
    ("weight_decay=-1e-4", "weight_decay", ">= 0"),
    ("warmup_epochs=40", "warmup_epochs", "epochs=30"),
    ("momentum=1", "momentum", "[0, 1)"),
    ("seed=-1", "seed", ">= 0"),
    ("num_classes=1", "num_classes", ">= 2"),
    ("num_classes=11", "num_classes", "10 classes"),
    ("dataset=cifar10", "data_root", "required"),
    ("reference_fraction=1", "reference_fraction", "(0, 1)"),
    ("eval_split=test", "eval_split", "no test split"),
    ("eval_split=held", "eval_split", "holdout"),
    ("reference_size=2", "reference_size", ">= 4"),
    ("eval_every=0", "eval_every", ">= 1"),
    ("knn_k=0", "knn_k", ">= 1"),
    ("projector_dim=0", "projector_dim", ">= 1"),
    ("hidden_dim=0", "hidden_dim", ">= 1"),
    ("device=gpu", "device", "cuda:N"),
    ("out=", "out", "null"),
    ("epochs=null", "epochs", "null"),
    ("augment.crop_scale=[0.5]", "augment.crop_scale", "2 values"),
    ("augment.crop_scale=[a, 1]", "augment.crop_scale", "'a'"),
    ("snapshot_epochs=[x]", "snapshot_epochs", "list of int"),
    ("augment.crop_scale=[0.9, 0.5]", "augment.crop_scale", "low <= high"),
    ("augment.rotation=200", "augment.rotation", "[0, 180]"),
    ("augment.hue=0.6", "augment.hue", "[0, 0.5]"),
    ("augment.blur_kernel=4", "augment.blur_kernel", "odd"),
    ("augment.preset=simclr", "augment.preset", "simclr_cifar"),
    ("augment.jitter_p=1.5", "augment.jitter_p", "[0, 1]"),
    ("augment.noise_std=-0.1", "augment.noise_std", ">= 0"),
])
def test_errors_name_the_key(override, key, extra):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    message = str(info.value)
    assert f"'{key}'" in message and extra in message, message
    assert isinstance(info.value, ValueError)


def test_stratified_batch_size_must_divide_classes():
    with pytest.raises(ConfigError, match="'batch_size'.*10 classes.*stratified"):
        load_config(overrides=["sampler=stratified"])
    assert load_config(overrides=["sampler=stratified", "batch_size=250"]).batch_size == 250
    assert load_config(overrides=["sampler=stratified", "num_classes=4"]).sampler == "stratified"


def test_other_error_paths(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["temperature"])
    with pytest.raises(ConfigError, match="no key"):
        load_config(overrides=["=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("temperatur: 0.1\n")
    with pytest.raises(ConfigError, match=r"'temperatur' in .*bad\.yaml.*did you mean 'temperature'"):
        load_config(bad)
    bad.write_text("augment:\n  rotate: 3\n")
    with pytest.raises(ConfigError, match="'augment.rotate'"):
        load_config(bad)
    bad.write_text("temperature: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    # direct construction and dataclasses.replace validate too
    with pytest.raises(ConfigError, match="'temperature'"):
        Config(temperature=-0.5)
    with pytest.raises(ConfigError, match="'batch_size'"):
        dataclasses.replace(Config(), batch_size=1)
    with pytest.raises(ConfigError, match="'augment.sharpness'"):
        Config(augment={"sharpness": 0.1})


def test_describe_lists_every_key_with_default_and_choices():
    text = describe()
    keys = [f.name for f in dataclasses.fields(Config) if f.name != "augment"]
    keys += [f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig)]
    for key in keys:
        assert f"  {key} (" in text, key
    assert "temperature (float, default 0.5)" in text
    assert "objectives (list of str, default [cl, nscl, supcon, ce])" in text
    assert "choices: sgd, adamw, lars" in text and "choices: digits, cifar10, cifar100, imagefolder" in text
    assert "num_classes (int or null, default null)" in text


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    """Every config in configs/ is valid once data_root is given (the paper's settings: ResNet-50, batch 1024,
    LARS)."""
    cfg = load_config(path, ["data_root=/data", "eval_root=/data/val"])
    assert cfg.eval_split == "test"  # the reference sets are the datasets' held-out splits
    assert cfg.model == "resnet50" and cfg.batch_size == 1024 and cfg.optimizer == "lars"


# the NSCL authors' settings (DLFundamentals/understanding-ssl-v2: configs/*_resnet50.yaml, their transforms):
# (τ, projector output, epochs, colour jitter (b, c, s, h), its p, grayscale p, blur (p, kernel, σ))
AUTHORS = {
    "cifar10.yaml": (0.5, 64, 1200, (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, (0.0, None, None)),
    "cifar100.yaml": (0.1, 128, 1200, (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, (0.0, None, None)),
    "tiny-imagenet.yaml": (0.1, 128, 1200, (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, (0.0, None, None)),
    "mini-imagenet.yaml": (0.1, 128, 1200, (0.8, 0.8, 0.8, 0.2), 1.0, 0.2, (0.1, 3, (1.5, 1.5))),
    "imagenet.yaml": (0.1, 128, 300, (0.8, 0.8, 0.8, 0.2), 1.0, 0.2, (0.1, 3, (1.5, 1.5))),
}


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_shipped_configs_carry_the_authors_settings(name):
    tau, proj, epochs, jitter, jitter_p, gray_p, (blur_p, kernel, sigma) = AUTHORS[name]
    cfg = load_config(REPO / "configs" / name, ["data_root=/data", "eval_root=/data/val"])
    a = cfg.augment
    assert (cfg.temperature, cfg.projector_dim, cfg.epochs, cfg.hidden_dim) == (tau, proj, epochs, 2048)
    assert (cfg.lr, cfg.lr_scaling, cfg.weight_decay, cfg.grad_clip) == (0.3, "linear", 1e-6, 1.0)
    assert cfg.warmup_epochs == 10
    assert (a.brightness, a.contrast, a.saturation, a.hue) == jitter and a.jitter_p == jitter_p
    assert (a.crop_scale, a.hflip_p, a.grayscale_p, a.rotation, a.noise_std, a.solarize_p) == ((0.08, 1.0), 0.5, gray_p,
                                                                                              0.0, 0.0, 0.0)
    assert a.blur_p == blur_p and (blur_p == 0 or (a.blur_kernel, a.blur_sigma) == (kernel, sigma))
    assert cfg.epochs in cfg.snapshot_epochs and 100 in cfg.snapshot_epochs


def test_augment_presets_reset_and_then_take_keys():
    """Setting augment.preset resets the augment keys to the preset; keys set after it (or beside it in a
    mapping, in any order) change it; the saved config loads back to the same values."""
    c = load_config(overrides=["augment.rotation=3", "augment.preset=simclr_cifar", "augment.hue=0.2"])
    assert c.augment == AugmentConfig(preset="simclr_cifar", hue=0.2) and c.augment.rotation == 0.0
    m = load_config(overrides=["augment={hflip_p: 0.1, preset: simclr_imagenet}"])
    assert m.augment.hflip_p == 0.1 and m.augment.blur_p == 0.5
    assert load_config(overrides=[f"{k}={v}" for k, v in _flat(m.to_dict())]).augment == m.augment
    assert AugmentConfig(preset="digits") == AugmentConfig()


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", "null" if v is None else v


def test_an_imagefolder_test_split_needs_its_tree():
    with pytest.raises(ConfigError, match="'eval_root'.*required"):
        load_config(overrides=["dataset=imagefolder", "data_root=/data", "eval_split=test"])


def test_run_keys_are_declared_on_the_fields():
    """The keys a resumed run must share with its checkpoint are the fields with run=True in their metadata."""
    expected = {"objectives", "temperature", "decoupled", "batch_size", "epochs", "optimizer", "lr", "lr_scaling",
                "momentum", "weight_decay", "warmup_epochs", "sampler", "seed", "dataset", "num_classes",
                "reference_fraction", "reference_size", "probe_size", "gap_batches", "model", "hidden_dim",
                "projector_dim", "augment", "image_size", "eval_split", "decode_size", "decode_aspect", "gpu_decode"}
    assert set(run_keys()) == expected and len(run_keys()) == len(expected)
    assert {f.name for f in dataclasses.fields(Config) if f.metadata["run"]} == expected


def test_from_dict_gives_missing_keys_their_defaults_and_checks_the_rest():
    c = load_config(overrides=["temperature=0.2", "augment.preset=simclr_cifar", "augment.hflip_p=0"])
    assert Config.from_dict(c.to_dict()) == c
    assert Config.from_dict({"temperature": 0.2}) == Config(temperature=0.2)
    assert Config.from_dict({}) == Config()
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        Config.from_dict({"temperatur": 0.2})
    with pytest.raises(ConfigError, match="'batch_size'.*integer"):
        Config.from_dict({"batch_size": "many"})


def test_changes_since_names_the_other_keys_that_changed():
    saved = Config(grad_clip=1.0, eval_every=5).to_dict()
    now = Config(amp=False, eval_every=7)
    assert now.changes_since(saved) == {"eval_every": [5, 7], "amp": [True, False], "grad_clip": [1.0, None]}
    assert now.changes_since(None) == {}
    del saved["amp"]  # a config from before a key existed had its default
    assert now.changes_since(saved) == {"eval_every": [5, 7], "amp": [True, False], "grad_clip": [1.0, None]}
    assert Config(temperature=0.2).changes_since(saved | {"eval_every": 20, "grad_clip": None}) == {}
