"""Ship a trained model: the bundle format, ONNX export and sessions, the parity gate and int8, and the runtime that predicts from a bundle or checkpoint."""
