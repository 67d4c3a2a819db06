"""ONNX export of a static subnet, and the check every deployment passes: logits against PyTorch."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.utils import atomic_write_bytes

MAX_REL_ERR = 1e-4


def export_onnx(model, x, out: str | Path) -> np.ndarray:
    """torch.onnx.export (TorchScript exporter, opset 17), written atomically, then run the file with
    onnxruntime on `x`."""
    import onnxruntime as ort
    import torch

    from nasbnn_hw.deploy.tvm_net import check_outputs
    check_outputs({"ONNX file": out}, force=True)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # shapes are static in a subnet: the tracer's notes about Python-side shape checks do not apply
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript exporter is deprecated in favour of the torch.export one (dynamo=True), kept here
        # on purpose while torch ships it: for a small16 subnet it takes 0.3 s against 5.4 s, needs no extra
        # package (onnxscript) and logs nothing; both give logits within 3e-7 of PyTorch.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    atomic_write_bytes(out, buf.getvalue())
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x.numpy()})[0]


def check_agreement(name: str, got: np.ndarray, ref: np.ndarray, model=None, x=None) -> dict:
    """{'max_rel_err', 'same_top1'} of deployed logits `got` against PyTorch's `ref`; raises when they
    disagree (relative error above 1e-4 or a different top-1), unless `model` (the static subnet) and its
    input `x` are given and the difference is explained by binary activations at values within rounding
    of zero (`agreement.explain`): then the result carries 'explained', the sentence saying which."""
    rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    same = bool((got.argmax(1) == ref.argmax(1)).all())
    if rel <= MAX_REL_ERR and same:
        return {"max_rel_err": rel, "same_top1": same}
    why = ""
    if model is not None and x is not None and hasattr(model, "blocks"):
        from nasbnn_hw.deploy.agreement import explain
        e = explain(model, x, got, tol=MAX_REL_ERR)
        if e.explained:
            return {"max_rel_err": rel, "same_top1": same, "explained": str(e)}
        why = f"; {e}"
    raise NasBnnError(f"{name} export disagrees with PyTorch (max rel err {rel:.2e}, same top-1 {same}){why}")
