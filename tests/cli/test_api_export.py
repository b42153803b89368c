"""``detprune.export(...)`` stays the API's export after the ``detprune.export`` package is imported
(importing a subpackage binds its name on the parent, over the lazily resolved function)."""

import subprocess
import sys


def test_export_is_callable_after_the_export_package_is_imported(tmp_path):
    code = f"""
import detprune
import detprune.export.onnx  # binds detprune.export to the package
model = detprune.load("yolov8n.yaml")
for k in range(2):  # and again, after the first call imported it too
    result = detprune.export(model, r"{tmp_path}/m%d.onnx" % k, imgsz=64)
    assert result.path.is_file(), result
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
