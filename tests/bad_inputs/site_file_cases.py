#!/usr/bin/env python3
"""Regenerates the data_* cases of this corpus from tests/test_site_files.cpp.

SiteFileValidation writes its 34 bad site files (HDF5, safetensors, npy) when run with
SQLAB_KEEP_BAD_INPUTS=DIR; this script turns each into a case directory
data_{hdf5,safetensors,npy}_WHAT/ with the experiment renamed to experiment.yaml and
case.yaml listing the message fragments that test expects:

    SQLAB_KEEP_BAD_INPUTS=/tmp/kept build/sqlab_tests --gtest_filter='SiteFileValidation.*'
    /usr/bin/python3 tests/bad_inputs/site_file_cases.py /tmp/kept
"""
import json
import os
import re
import shutil
import sys

here = os.path.dirname(os.path.abspath(__file__))
source = open(os.path.join(here, "..", "test_site_files.cpp")).read()
kept = sys.argv[1]
STRING = r'"(?:[^"\\]|\\.)*"'
for name in sorted(os.listdir(kept)):
    start = source.find('{"%s",' % name)
    if start < 0:
        sys.exit("no case %s in test_site_files.cpp" % name)
    entry = source[start:source.find("}},", start) + 2]
    # The entry's last {"...", "..."} list holds the fragments its message must contain.
    fragments = re.findall(STRING, re.findall(r"\{\s*(%s(?:\s*,\s*%s)*)\s*\}" % (STRING, STRING), entry, re.S)[-1])
    fragments = [json.loads(f).replace("case.yaml", "experiment.yaml") for f in fragments]
    kind, what = name.split("_", 1)
    kind = {"h5": "hdf5", "st": "safetensors", "npy": "npy"}[kind]
    target = os.path.join(here, "data_%s_%s" % (kind, what))
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(os.path.join(kept, name), target)
    os.rename(os.path.join(target, "case.yaml"), os.path.join(target, "experiment.yaml"))
    with open(os.path.join(target, "case.yaml"), "w") as f:
        f.write("description: %s\n" % json.dumps("site file (%s): %s" % (kind, what.replace("_", " "))))
        f.write('command: ["run", "experiment.yaml", "--out", "out"]\nexit: 2\n')
        f.write("message: [%s]\n" % ", ".join(json.dumps(x) for x in fragments))
    print(target)
