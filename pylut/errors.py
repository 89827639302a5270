"""Exception types shared across pylut."""


class ModelFileError(ValueError):
    """A model file (GGUF, safetensors, index JSON) is malformed or unsupported.

    Messages name the file, say what is wrong and, where possible, hint at a fix.
    Subclasses ValueError so callers that only know about the standard hierarchy
    still catch it.
    """
