"""Crafted NVIDIA-style pickles: embedded source never runs; any other callable is refused."""
import builtins
import io
import os
import pickle

import pytest
import torch

import nvidia_fakes as nv
from stylegan2 import UnsafeCheckpointError, load_generator
from stylegan2.nvidia import PersistentRecord, load_nvidia_pickle


class _Call:
    """Pickles as ``func(*args)``: what a malicious file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_embedded_source_is_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    G = nv.Generator(seed=1)
    payload = (f"import os\nopen({str(marker)!r}, 'w').write('x')\n"
               f"os.system('touch {marker}')\n")
    for module in G.modules():
        module.module_src = payload  # class attribute shadowed per instance: in every record
    path = tmp_path / "evil_src.pkl"
    nv.dump({"G_ema": G}, path)
    assert payload.encode() in path.read_bytes()
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("os.system was called"))
    _, w_avg = load_generator(path)
    assert not marker.exists()
    torch.testing.assert_close(w_avg, G.mapping.w_avg)
    record = load_nvidia_pickle(path)["G_ema"]
    assert isinstance(record, PersistentRecord) and record.module_src == payload


@pytest.mark.parametrize("func, args, name", [
    (os.system, ("echo hi",), "system"),  # posix.system on Linux
    (builtins.eval, ("1+1",), "builtins.eval"),
    (builtins.exec, ("x=1",), "builtins.exec"),
])
def test_other_callables_are_refused(tmp_path, func, args, name):
    G = nv.Generator(seed=2)
    G.mapping.evil = _Call(func, *args)  # hidden deep in a module's state
    path = tmp_path / "evil.pkl"
    nv.dump({"G_ema": G}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_generator(path)
    message = str(err.value)
    assert str(path) in message and name in message and "refused" in message


def test_nested_torch_load_is_weights_only(tmp_path):
    """``torch.storage._load_from_bytes`` bytes holding a non-tensor global are refused too."""
    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    inner = io.BytesIO()
    torch.save(Evil(), inner, _use_new_zipfile_serialization=False)  # the format storages use
    path = tmp_path / "inner.pkl"
    with open(path, "wb") as f:
        pickle.dump(_Call(torch.storage._load_from_bytes, inner.getvalue()), f, protocol=3)
    with pytest.raises(UnsafeCheckpointError, match=r"inner.pkl: refused.*'posix.system'"):
        load_nvidia_pickle(path)


def test_persistence_record_of_other_type_is_refused(tmp_path):
    path = tmp_path / "odd.pkl"
    with nv._persistence_module(), open(path, "wb") as f:
        pickle.dump(_Call(nv._reconstruct_persistent_obj, {"type": "function", "state": {}}), f)
    with pytest.raises(UnsafeCheckpointError, match="type 'class'"):
        load_nvidia_pickle(path)


def test_convert_refuses_an_unsafe_pickle_in_one_line(tmp_path, capsys):
    from stylegan2.convert import main
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(_Call(os.system, "echo pwned"), f)
    assert main([str(path), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "refused" in err and "system" in err and "\n" not in err
    assert not (tmp_path / "out.pt").exists()
