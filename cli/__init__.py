from onnxcam.models.version import __version__  # noqa: F401
