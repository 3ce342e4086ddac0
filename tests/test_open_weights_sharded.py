"""Sharded import: on 8 simulated devices (fsdp=4 x tensor=2) each device's slice of every parameter
is read by itself from the safetensors file; no tensor is ever read whole."""

import pytest

from tests.helpers import facts_on_simulated_devices

pytestmark = pytest.mark.slow  # an 8-device subprocess


def test_each_device_reads_only_its_own_slices_and_gets_the_one_device_import():
    facts = facts_on_simulated_devices("open_weights_sharded_check.py")
    assert facts["same_as_one_device"]
    # What the devices hold, less the vocabulary's padding rows (zeros, never read: 300 ids padded to
    # 384, in the table and the head), is exactly what was read.
    assert facts["elements_held"] - facts["elements_read"] == (384 - 300) * 64 * 2, facts
    assert facts["largest_read"] < facts["largest_tensor"] / 2  # no whole tensor, not even half of one
    for name in ("embedding']['table_vd", "unembed_dv", "blocks']['attention']['q_dnh", "blocks']['mlp']['down_md"):
        assert facts["split"][f"['{name}'].value"][0] == 8, name  # eight distinct slices, one per device
