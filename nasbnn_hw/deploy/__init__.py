"""From a subnet to code that runs on a device: TVM compute and schedules of the binary kernels
(`kernels/`), whole compiled subnets (`tvm_net`), ONNX export (`onnx_net`)."""
