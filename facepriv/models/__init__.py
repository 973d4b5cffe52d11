"""Surrogate recognisers. Every model takes RGB pixels in [0, 1], NCHW, at `model.input_size`;
normalisation lives inside the model. Classifiers return logits; embedders return embeddings.

- `registry`: architecture names (`ARCHES`) -> constructors; `checkpoint`: one-file checkpoints;
- `paper_cnn`, `inception`: the paper's classifier and facenet-pytorch's network;
- `tfjs/`: the TF.js graph-model importer (pretrained face embedders); `install`: the installer;
- `store`: where installed surrogates live ($FACEPRIV_HOME/models) and loading them by name;
- `decoys`: the fixed decoy banks of the embedding attack (`decoy_banks/`).

Importing this package imports nothing heavy: the CLI reads `store` without loading torch.
"""
