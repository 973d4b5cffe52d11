"""The report's headline and its markdown table come from report.json, not typed by hand."""

from facepriv.report.headline import expect_table, headline

REPORT = {
    "judges": ["dlib", "sface"], "transforms": ["jpeg95", "jpeg75", "down0.5"],
    "runs": [{
        "run_id": "R", "attack": "embed-pgd", "faces": 10,
        "face_psnr_mean": 35.2, "face_ssimulacra2_mean": 61.4, "face_ssimulacra2_min": 50.8,
        "judges": {"dlib": {"protection_rate": 0.8, "verification": {"protection_rate": 0.7}},
                   "sface": {"protection_rate": 0.3}},
        "robustness": {"jpeg95": {"judges": {"dlib": {"protection_rate": 0.75}}},
                       "jpeg75": {"judges": {"dlib": {"protection_rate": 0.6}, "sface": {"protection_rate": 0.2}}},
                       "down0.5": {"judges": {}}},
    }],
}


def test_headline_names_each_judge_the_harshest_jpeg_and_the_face_quality():
    (line,) = headline(REPORT)
    assert "dlib 80% (verification 70%), after JPEG q75 60%" in line
    assert "sface 30%, after JPEG q75 20%" in line
    assert "face SSIMULACRA 2 61 mean, 51 worst" in line


def test_expect_table_has_a_row_per_judge_and_protocol_with_every_stage():
    rows = expect_table(REPORT).splitlines()
    assert rows[0] == "| run | judge | protocol | written file | JPEG q95 | JPEG q75 | half size |"
    assert "| R | dlib | identification | 80% | 75% | 60% | - |" in rows
    assert "| R | dlib | verification | 70% | - | - | - |" in rows
    assert "| R | sface | identification | 30% | - | 20% | - |" in rows
    assert not any("sface | verification" in r for r in rows)  # never measured: no row
    assert any("SSIMULACRA 2 mean 61 / min 51" in r for r in rows)
