"""report.html: self-contained, and its live numbers in a real browser equal the package's."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from anomaly.cli import finetune as finetune_cli
from anomaly.cli import test as test_cli


@pytest.fixture(scope="module")
def reported(trained, tmp_path_factory):
    """A copy of the session's model, finetuned and tested with --report."""
    model_dir = shutil.copytree(trained, tmp_path_factory.mktemp("report") / "model")
    assert finetune_cli.main(["-p", str(model_dir), "-q"]) == 0
    assert test_cli.main(["-p", str(model_dir), "-q", "--report"]) == 0
    (report,) = model_dir.glob("test/*/report.html")
    return model_dir, report


def _data(text: str) -> dict:
    return json.loads(re.search(r"const DATA = (\{.*?\});\n", text).group(1).replace("<\\/", "</"))


def test_the_report_is_one_self_contained_page(reported):
    _, report = reported
    text = report.read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", text), "nothing may be fetched from a network"
    assert text.count('src="data:image/jpeg;base64,') == 3 * text.count('<tr data-i="')
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert text.count('<tr data-i="') == metrics["n_images"] + metrics["n_excluded_finetune"]
    data = _data(text)
    assert np.isclose(data["thresholds"][data["start"]], metrics["threshold"])  # the slider starts at the rule


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None or shutil.which("chromium") is None:
        pytest.skip("no chromium/chromedriver on this machine (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def test_the_slider_updates_the_numbers_as_the_package_computes_them(reported):
    import anomaly
    from anomaly.config import saved_config
    from anomaly.metrics import classification_metrics

    model_dir, report = reported
    driver = _browser()
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        driver.get(report.resolve().as_uri())
        text = {i: driver.find_element(By.ID, i).text for i in ("tpr", "tnr", "balanced-accuracy")}
        metrics = json.loads((report.parent / "metrics.json").read_text())
        if metrics["n_excluded_finetune"] == 0:  # then the page's set is the metrics' set
            for key, shown in zip(("tpr", "tnr", "balanced_accuracy"), text.values()):
                assert float(shown) == pytest.approx(metrics[key], abs=1e-4)
        model = anomaly.load(model_dir)
        test = saved_config(model_dir).dataset().test
        names = [row.find_element(By.CSS_SELECTOR, "td").text
                 for row in driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")]
        assert names == [s.relpath for s in test]
        labels = np.array([s.label for s in test])
        slider = driver.find_element(By.ID, "threshold")
        for moves, key in ((7, Keys.ARROW_LEFT), (15, Keys.ARROW_RIGHT)):
            for _ in range(moves):
                slider.send_keys(key)  # a person's key presses: the browser fires the input events
            k = int(slider.get_attribute("value"))
            threshold = driver.execute_script(f"return DATA.thresholds[{k}];")
            expected_pred = model.predict([str(s.path) for s in test], threshold=threshold).is_anomalous
            expected = classification_metrics(labels, expected_pred.astype(int))
            shown = {i: driver.find_element(By.ID, i).text for i in ("tp", "fp", "tn", "fn", "tpr", "tnr",
                                                                      "balanced-accuracy")}
            assert int(shown["tp"]) == int(np.sum(expected_pred & (labels == 1)))
            assert int(shown["fp"]) == int(np.sum(expected_pred & (labels == 0)))
            assert int(shown["tn"]) + int(shown["fp"]) == int(np.sum(labels == 0))
            for key_, shown_key in (("tpr", "tpr"), ("tnr", "tnr"), ("balanced_accuracy", "balanced-accuracy")):
                assert float(shown[shown_key]) == pytest.approx(expected[key_], abs=1e-4)
            decisions = [row.find_element(By.CSS_SELECTOR, ".decision").text
                         for row in driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")]
            assert decisions == ["anomalous" if p else "good" for p in expected_pred]
        # Sorting: a click on "score" orders the rows by score.
        driver.find_elements(By.CSS_SELECTOR, "#images th")[1].click()
        scores = [float(row.find_elements(By.CSS_SELECTOR, "td")[1].text)
                  for row in driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")]
        assert scores == sorted(scores)
    finally:
        driver.quit()


def test_the_prediction_report_redecides_unlabelled_images_as_the_package_does(reported, tmp_path):
    import anomaly
    from anomaly.cli import predict as predict_cli
    from anomaly.config import saved_config

    model_dir, _ = reported
    test = saved_config(model_dir).dataset().test
    folder = test[0].path.parents[1]  # the test folder: every image, no labels given
    out = tmp_path / "out"
    assert predict_cli.main(["-p", str(model_dir), str(folder), "-o", str(out), "-q", "--report"]) == 0
    text = (out / "report.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", text) and _data(text)["labels"] is None
    driver = _browser()
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        driver.get((out / "report.html").resolve().as_uri())
        paths = [row.find_element(By.CSS_SELECTOR, "td").text
                 for row in driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")]
        slider = driver.find_element(By.ID, "threshold")
        model = anomaly.load(model_dir)
        for moves, key in ((0, Keys.ARROW_LEFT), (10, Keys.ARROW_LEFT)):
            for _ in range(moves):
                slider.send_keys(key)
            threshold = driver.execute_script(f"return DATA.thresholds[{int(slider.get_attribute('value'))}];")
            expected = model.predict(paths, threshold=threshold).is_anomalous
            decisions = [row.find_element(By.CSS_SELECTOR, ".decision").text
                         for row in driver.find_elements(By.CSS_SELECTOR, "#images tbody tr")]
            assert decisions == ["anomalous" if p else "good" for p in expected]
            assert driver.find_element(By.ID, "n-anomalous").text == f"{int(expected.sum())} of {len(paths)}"
            assert driver.find_element(By.ID, "tpr").text == "n/a"
    finally:
        driver.quit()
