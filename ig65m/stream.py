"""Stream models run chunk by chunk with explicit state: torch or ONNX Runtime, same numbers.

A stream model (`MoViNet` with `causal=True`) maps (chunk, state) -> (logits, features, state).
`export_stream_onnx` writes that function with every buffer as an explicit ONNX input and output
(`state_0 ... state_K` in, `next_state_0 ... next_state_K` out; `state_0` is the count of frames
seen). `StreamRunner` feeds chunks through either backend and keeps the state, so memory stays
constant however long the stream.
"""

import warnings

import numpy as np
import torch

from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path


STREAM_BACKENDS = ("torch", "onnxruntime")


def stream_backend(requested):
    """The backend a stream model runs with: `auto` is torch (auto's measurement covers clip
    models only); backends other than STREAM_BACKENDS are refused with one line."""
    if requested == "auto":
        return "torch"
    if requested not in STREAM_BACKENDS:
        raise Ig65mError(f"stream models run with --backend {' or '.join(STREAM_BACKENDS)} "
                         f"(or auto), not {requested}")
    return requested


def _state_names(count):
    return [f"state_{i}" for i in range(count)], [f"next_state_{i}" for i in range(count)]


class _StepModule(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, clips, *state):
        return self.model.stream_step(clips, *state)


def export_stream_onnx(model, path, *, height, width, chunk_frames=1, batch=1):
    """Write `model.stream_step` as ONNX for (batch, 3, chunk_frames, height, width) chunks.

    Inputs `clips` and `state_*`; outputs `logits` (batch, K), `features` (batch, D) and
    `next_state_*`, to be fed back as the next step's `state_*`. Returns the zero initial state.
    """
    if not getattr(model, "causal", False):
        raise Ig65mError("only stream models export with stream buffers")
    was_training = model.training
    model.eval()
    state = model.initial_state(batch, height, width)
    clips = torch.zeros(batch, 3, chunk_frames, height, width)
    inputs, outputs = _state_names(len(state))
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The exporter puts the module back in the mode it found it: eval, set explicitly.
        torch.onnx.export(_StepModule(model).eval(), (clips, *state), str(tmp), dynamo=False,
                          input_names=["clips", *inputs],
                          output_names=["logits", "features", *outputs], opset_version=17)
    model.train(was_training)
    return state


class StreamRunner:
    """Feed (1, 3, t, H, W) float chunks of one stream; `step` -> (logits (K,), features (D,)).

    backend "torch" runs `model` on `device`; "onnxruntime" exports `model` to the path `onnx` (with
    `export_stream_onnx`, `chunk_frames` frames a step) and runs that file in ONNX Runtime.
    `reset()` starts a new stream (the `clean_activation_buffers()` of the explicit state).
    `threads`: ONNX Runtime intra-op threads (None: every core); torch uses the process setting.
    """

    def __init__(self, model, *, height, width, backend="torch", onnx=None, device="cpu",
                 chunk_frames=1, threads=None):
        self.model, self.backend, self.device, self.threads = model, backend, device, threads
        self.height, self.width, self.chunk_frames = height, width, chunk_frames
        if backend == "onnxruntime":
            if onnx is None:
                raise Ig65mError("the onnxruntime backend needs an .onnx path for the stream model")
            self._session = self._open_onnx(onnx)
        elif backend != "torch":
            stream_backend(backend)
        self.reset()

    def _open_onnx(self, path):
        from ig65m.backends.ort import ort_session

        export_stream_onnx(self.model, path, height=self.height, width=self.width,
                           chunk_frames=self.chunk_frames)
        return ort_session(path, threads=self.threads, device="cpu")

    def reset(self):
        state = self.model.initial_state(1, self.height, self.width,
                                         device=self.device if self.backend == "torch" else None)
        self._state = state if self.backend == "torch" else [s.numpy() for s in state]

    @torch.inference_mode()
    def step(self, chunk):
        """One chunk (1, 3, t, H, W) float32 (tensor or array) -> (logits, features) numpy."""
        if self.backend == "onnxruntime":
            feeds = {"clips": np.ascontiguousarray(chunk, dtype=np.float32)}
            feeds.update({f"state_{i}": s for i, s in enumerate(self._state)})
            logits, features, *self._state = self._session.run(None, feeds)
            return logits[0], features[0]
        chunk = torch.as_tensor(chunk).to(self.device)
        logits, features, *state = self.model.stream_step(chunk, *self._state)
        self._state = state
        return logits[0].float().cpu().numpy(), features[0].float().cpu().numpy()
