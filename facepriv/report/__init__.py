"""Dataset-level reports: fooling rates, quality, independent judges, robustness, HTML.

    facepriv report DST [DST ...] --judge dlib --gallery train/ --labels folder

- `aggregate`: pure functions over manifest rows (fooling rate per setting/identity/format,
  PSNR/SSIM distributions, faces per photo, errors by reason, timings, report.json `runs`).
- `evaluate`: re-judges a run from its files (judges in evasion/poisoning mode, robustness
  transforms re-detected and re-classified by the surrogate and every judge).
- `panels`: face panels (original, amplified perturbation, cloaked) and the eps curve.
- `html`: index.html from the report dict.
- `build`: the job that ties them together and writes DST/_facepriv/report/.
- `robustness`: the transforms (JPEG re-saves, resizes) a report judges under.

The `facepriv report` command is facepriv/cli/report.py. Importing this package imports
nothing heavy.
"""
