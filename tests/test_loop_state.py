"""The training loop's state converts to a checkpoint payload and back unchanged."""
import pytest

from collm_faissret.checkpoint import CheckpointError
from collm_faissret.runners.loop_state import LoopState


def test_payload_round_trip_and_mid_epoch_key():
    state = LoopState(epoch=2, step=40, opt_step=20, best_auc=0.71, best_epoch=1, bad_epochs=1,
                      history=[{"epoch": 0, "auc": 0.7}], train_loss=[0.6, 0.5], loss_log=[[10, 0.6], [20, 0.5]],
                      nonfinite_skipped=3)
    payload = state.to_payload()
    assert "loss_acc" not in payload  # only a mid-epoch checkpoint carries the interval's sums
    assert LoopState.from_payload(payload, "x.pth") == state
    payload["history"][0]["auc"] = 0.0  # a copy: the payload does not alias the live state
    assert state.history[0]["auc"] == 0.7
    mid = LoopState(step=5, loss_acc=(1.25, 3)).to_payload()
    assert mid["loss_acc"] == (1.25, 3) and LoopState.from_payload(mid, "x.pth").loss_acc == (1.25, 3)


def test_older_payload_without_optional_keys_resumes_with_defaults():
    payload = {k: v for k, v in LoopState(epoch=1, step=8).to_payload().items()
               if k not in ("train_loss", "loss_log", "nonfinite_skipped")}
    state = LoopState.from_payload(payload, "x.pth")
    assert (state.epoch, state.step, state.train_loss, state.nonfinite_skipped) == (1, 8, [], 0)


def test_payload_without_training_keys_refused_naming_them():
    with pytest.raises(CheckpointError, match=r"cf_model.pth: not a training checkpoint \(no epoch, step"):
        LoopState.from_payload({"model": {}}, "cf_model.pth")
