"""``infer.compile``: the engine compiles its model in place, so names and fingerprints stay."""
import torch

from psp.inference.engine import Engine, load_inference_model
from stylegan2.fingerprint import generator_sha256


def test_compile_is_in_place_and_keeps_the_generator_fingerprint(checkpoint):
    # Compiling happens lazily at the first forward, so this costs nothing; the run itself is a
    # benchmark matter (docs/inversion.md#throughput gives its warm-up cost).
    model = load_inference_model(checkpoint, torch.device("cpu"))
    names = {part: list(getattr(model, part).state_dict()) for part in ("encoder", "generator")}
    fingerprint = generator_sha256(model.generator)
    encoder, generator = model.encoder, model.generator
    Engine(model, torch.device("cpu"), compile=True)
    assert model.encoder is encoder and model.generator is generator
    assert {part: list(getattr(model, part).state_dict()) for part in names} == names
    assert generator_sha256(model.generator) == fingerprint  # latents still name their generator
    assert all(getattr(m, "_compiled_call_impl", None) is not None for m in (encoder, generator))
