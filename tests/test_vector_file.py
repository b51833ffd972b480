"""Vector files you bring: GGUF control vectors (checked against llama.cpp's own gguf package), safetensors, pickles."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pytest_steer.storage.vector_file import VectorFileError, check_fits, read_gguf, read_vectors, write_gguf

gguf = pytest.importorskip("gguf")  # in the test extra: llama.cpp's reader and writer, the reference


def _vectors(width: int = 8, layers: tuple[int, ...] = (1, 3, 4)) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {l: torch.randn(width, generator=g) for l in layers}


def test_gguf_written_here_round_trips_and_llama_cpp_reads_it(tmp_path: Path):
    vectors = _vectors()
    path = tmp_path / "happy.gguf"
    write_gguf(path, vectors, model_hint="llama")
    back = read_vectors(path)
    assert list(back) == [1, 3, 4] and all(torch.equal(back[l], vectors[l]) for l in vectors)
    reader = gguf.GGUFReader(str(path))  # the reference reader sees the same file
    fields = {name: f for name, f in reader.fields.items()}
    arch = fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.3", "direction.4"]
    for l, v in vectors.items():
        assert np.array_equal(tensors[f"direction.{l}"], v.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gguf_written_as_repeng_writes_it_is_read(tmp_path: Path, dtype):
    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "mistral")
    writer.add_uint32("controlvector.layer_count", 2)
    vectors = _vectors(16, (2, 5))
    for l, v in vectors.items():
        writer.add_tensor(f"direction.{l}", v.numpy().astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = read_gguf(path)
    for l, v in vectors.items():
        assert torch.allclose(back[l], torch.from_numpy(v.numpy().astype(dtype).astype(np.float32)))


def _gguf_with(tmp_path: Path, name: str, arch: str = "controlvector", tensor: str = "direction.1",
               array: np.ndarray | None = None) -> Path:
    path = tmp_path / name
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tensor(tensor, np.ones(4, np.float32) if array is None else array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_errors_name_the_file_and_what_was_expected(tmp_path: Path):
    model = _gguf_with(tmp_path, "model.gguf", arch="llama", tensor="token_embd.weight")
    with pytest.raises(VectorFileError, match=r"model\.gguf: field 'general.architecture' is 'llama'"):
        read_vectors(model)
    zero = _gguf_with(tmp_path, "zero.gguf", tensor="direction.0")
    with pytest.raises(VectorFileError, match=r"zero\.gguf: tensor 'direction.0': layer indices start at 1"):
        read_vectors(zero)
    other = _gguf_with(tmp_path, "other.gguf", tensor="bias")
    with pytest.raises(VectorFileError, match="holds only 'direction.<layer>' tensors"):
        read_vectors(other)
    matrix = _gguf_with(tmp_path, "matrix.gguf", array=np.ones((2, 4), np.float32))
    with pytest.raises(VectorFileError, match=r"tensor 'direction.1' has shape \[4, 2\]; expected one row"):
        read_vectors(matrix)
    nan = _gguf_with(tmp_path, "nan.gguf", array=np.array([1, np.nan, 0, 0], np.float32))
    with pytest.raises(VectorFileError, match="layer 1 holds a NaN"):
        read_vectors(nan)
    good = tmp_path / "good.gguf"
    write_gguf(good, _vectors())
    data = good.read_bytes()
    for cut in (3, 20, 60, len(data) - 5):  # truncated anywhere: a clear error, never a crash or a short vector
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(VectorFileError, match=rf"cut{cut}\.gguf: "):
            read_vectors(short)
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10**12, 1))
    with pytest.raises(VectorFileError, match="corrupt file"):
        read_vectors(huge)
    with pytest.raises(VectorFileError, match="cannot steer block 0"):
        write_gguf(tmp_path / "w.gguf", {0: torch.ones(3)})


def test_safetensors_layouts(tmp_path: Path):
    per_layer = tmp_path / "layers.safetensors"
    save_file({"layers.2": torch.ones(6), "layers.10": torch.zeros(6) + 2}, str(per_layer))
    assert {k: float(v[0]) for k, v in read_vectors(per_layer).items()} == {2: 1.0, 10: 2.0}
    single = tmp_path / "single.safetensors"
    save_file({"vector": torch.ones(6)}, str(single))
    assert list(read_vectors(single, layer=3)) == [3]
    with pytest.raises(VectorFileError, match=r"single\.safetensors: holds a single vector 'vector' and no layer; set `layer`"):
        read_vectors(single)
    stored = tmp_path / "accepted.safetensors"  # as pytest-steer stores an accepted vector: its layer in the metadata
    save_file({"caa_vector": torch.ones(6)}, str(stored), metadata={"layer": "4"})
    assert list(read_vectors(stored)) == [4]
    mixed = tmp_path / "mixed.safetensors"
    save_file({"layers.1": torch.ones(6), "bias": torch.ones(6)}, str(mixed))
    with pytest.raises(VectorFileError, match="tensor 'bias' has no layer in its name"):
        read_vectors(mixed)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 40)
    with pytest.raises(VectorFileError, match=r"garbage\.safetensors: not a readable safetensors file"):
        read_vectors(garbage)


def test_pickles_are_refused_unless_opted_in(tmp_path: Path):
    path = tmp_path / "vec.pt"
    torch.save({5: torch.ones(4), "7": torch.zeros(4) + 1}, path)
    with pytest.raises(VectorFileError, match=r"vec\.pt: a pickled file runs code when it is read"):
        read_vectors(path)
    assert list(read_vectors(path, allow_pickle=True)) == [5, 7]
    for name in ("vec.npy", "vec"):
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(VectorFileError, match="unknown vector file type"):
            read_vectors(tmp_path / name)
    with pytest.raises(VectorFileError, match="does not exist"):
        read_vectors(tmp_path / "nowhere.gguf")


def test_check_fits_names_width_and_layer():
    vectors = _vectors(8, (1, 3))
    check_fits(Path("v.gguf"), vectors, 8, 4)
    with pytest.raises(VectorFileError, match="v.gguf: the vector of layer 1 has 8 values; this model's residual stream is 16"):
        check_fits(Path("v.gguf"), vectors, 16, 4)
    with pytest.raises(VectorFileError, match=r"layer 3 is out of range for a model with 3 blocks \(0..2\)"):
        check_fits(Path("v.gguf"), vectors, 8, 3)


def test_the_example_control_vector_is_what_the_gguf_command_writes_from_the_accepted_caa_vector(tmp_path: Path):
    """steering_cases/vectors/*.gguf (the README's example) is reproducible from the committed baseline vector."""
    from safetensors import safe_open

    from pytest_steer.__main__ import main

    root = Path(__file__).resolve().parent.parent
    accepted = root / "baselines" / "qwen2.5-coder-0.5b" / "caa" / "positive-sentiment.safetensors"
    committed = root / "steering_cases" / "vectors" / "qwen2.5-coder-0.5b-positive.gguf"
    out = tmp_path / "positive.gguf"
    assert main(["gguf", str(accepted), str(out), "--scale", "4", "--model-hint", "qwen2"]) == 0
    assert out.read_bytes() == committed.read_bytes()
    with safe_open(str(accepted), framework="pt") as f:
        layer, vector = int(f.metadata()["layer"]), f.get_tensor("caa_vector")
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(committed)).tensors}
    assert list(tensors) == [f"direction.{layer}"] and np.array_equal(tensors[f"direction.{layer}"], (vector * 4).numpy())
    assert main(["gguf", str(tmp_path / "missing.safetensors"), str(out)]) == 2
