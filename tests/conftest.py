"""Shared fixtures: the golden reference data and small models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

GOLDEN_DIR = Path(__file__).resolve().parents[1].parent / 'shared' / 'golden'


@pytest.fixture(scope='session')
def golden() -> dict:
    """The reference's tensors (float16 stored, float32 returned) and its JSON facts; fails when missing."""
    st, js = GOLDEN_DIR / 'dada_step_seed0.safetensors', GOLDEN_DIR / 'dada_step_seed0.json'
    if not st.is_file() or not js.is_file():
        pytest.fail(f'golden reference data not found at {GOLDEN_DIR}: the parity tests need ../shared/golden '
                    'beside the repository')
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(st)).items()}
    return {'t': tensors, 'json': json.loads(js.read_text())}


def golden_state(golden: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The golden state dict stored under `prefix` (e.g. 'init_model.')."""
    return {k[len(prefix):]: v for k, v in golden['t'].items() if k.startswith(prefix)}
