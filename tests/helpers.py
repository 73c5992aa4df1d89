"""Assertions shared by the tests of several layers and models."""


def assert_config_round_trip(cls, args):
    """`cls(**args)` keeps every argument in `get_config`, and `from_config` rebuilds it exactly."""
    config = cls(**args).get_config()
    for key, value in args.items():
        assert config[key] == value, key
    clone = cls.from_config(config)
    assert isinstance(clone, cls)
    for key, value in args.items():
        assert getattr(clone, key) == value, key
    assert clone.get_config() == config
    return clone


def load_script(relative_path):
    """A script of the repository (cli.py, bench/*.py), which is not in a package: loaded by path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
