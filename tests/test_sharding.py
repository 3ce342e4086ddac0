"""On 8 simulated CPU devices (data=2, fsdp=2, tensor=2): init into shards, weights split, same logits,
the same train steps as one device.

The check runs in a subprocess (tests/sharded_check.py) so the rest of the suite keeps one device.
"""


import numpy as np
import pytest

from tests.helpers import facts_on_simulated_devices

pytestmark = pytest.mark.slow  # every test reads the facts of one 8-device subprocess


@pytest.fixture(scope="module")
def facts():
    return facts_on_simulated_devices("sharded_check.py")


def test_mesh_is_data2_fsdp2_tensor2(facts):
    assert facts["devices"] == 8 and facts["mesh"] == {"dcn_data": 1, "data": 2, "fsdp": 2, "tensor": 2}


def test_parameters_are_initialised_into_shards_never_as_a_full_copy(facts):
    full, out, temp = facts["full_param_bytes"], facts["init_output_bytes_per_device"], facts["init_temp_bytes_per_device"]
    # fsdp x tensor split the weights 4 ways (data replicates); norms are small and replicated.
    assert out < 0.3 * full, f"each device holds {out} of {full} parameter bytes"
    assert out + temp < full, f"the initialiser's per-device peak ({out} + {temp}) is a full copy ({full})"


def test_large_weights_are_really_split_as_their_logical_names_say(facts):
    for name, w in facts["weights"].items():
        assert w["spec"] == w["expected_spec"], name
        assert w["devices_holding_a_shard"] == 8, name
    expected_shards = {
        "embedding/table_vd": [128, 64],  # vocab 256 / tensor, embed 128 / fsdp
        "unembed_dv": [64, 128],
        "blocks/attention/q_dnh": [2, 64, 2, 32],  # layers, embed / fsdp, heads / tensor, head_dim
        "blocks/attention/o_nhd": [2, 2, 32, 64],
        "blocks/mlp/gate_dm": [2, 64, 256],
        "blocks/mlp/down_md": [2, 256, 64],
    }
    for name, shard_shape in expected_shards.items():
        assert facts["weights"][name]["shard_shape"] == shard_shape, name


def test_sharded_forward_equals_single_device_forward(facts):
    assert facts["forward_max_abs_diff"] < 1e-5 * max(1.0, facts["forward_max_abs_logit"])
    assert facts["logits_spec"] == "P(('data', 'fsdp'), None, 'tensor')"


def test_a_mesh_across_slices_initialises_the_same_parameters_and_logits(facts):
    assert facts["dcn_mesh"] == {"dcn_data": 2, "data": 1, "fsdp": 2, "tensor": 2}
    assert facts["dcn_init_max_abs_diff"] == 0.0, "initial values must not depend on the mesh"
    assert facts["dcn_forward_max_abs_diff"] < 1e-5 * max(1.0, facts["forward_max_abs_logit"])


def test_a_process_batch_becomes_a_global_array_split_over_the_batch_axes(facts):
    assert facts["global_batch_spec"] == "P(('dcn_data', 'data', 'fsdp'), None)"
    assert facts["global_batch_rows_per_device"] == 2 and facts["global_batch_equals_local"]


def test_sharded_train_steps_equal_single_device_train_steps(facts):
    # Three AdamW steps from the same start: the same losses, the same parameters, the same layout.
    np.testing.assert_allclose(facts["train_losses_sharded"], facts["train_losses_single"], rtol=1e-5)
    assert facts["train_params_max_abs_diff"] < 1e-4 * facts["train_params_max_abs"]
    assert facts["train_params_keep_their_shards"]


def test_optimizer_moments_are_initialised_into_the_shards_of_their_parameters(facts):
    assert facts["opt_state_bytes_per_device"] < 0.3 * facts["opt_state_full_bytes"], "Adam's moments are replicated"
