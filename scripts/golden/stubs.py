"""Empty stand-ins for modules the official code imports but a generator's code path never
calls (TensorBoard, scikit-learn, dataset tasks): imported by the generators in this folder."""

import importlib.machinery
import sys
import types


def stub(name, **attrs):
    """Registers module `name` holding `attrs`, with a spec so that importers that inspect it
    (PyTorch's dynamo) accept it."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module
