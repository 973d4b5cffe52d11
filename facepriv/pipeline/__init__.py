"""The per-photo pipeline, the same in process and in a Ray worker: `faces` (MTCNN),
`cloaker` (`Cloaker`: read -> detect -> attack -> verify -> write), `judge` (the written file read
back, re-detected, re-classified), `tally` (summary totals), `crops` and `train` (the paper's
classifier and the crops dataset of the universal fit).
"""
