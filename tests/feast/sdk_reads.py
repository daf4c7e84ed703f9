"""Reads Tidemark through Feast's own SDK (the `remote` online store of a repo written by
`tidemark feast export`) and prints one JSON report for tests/feast.rs to judge.

Usage: sdk_reads.py REPO BASE_URL N (compares up to N stored documents of doc-0…doc-4999)

The demo keeps changing its features, so a value read through the SDK is compared with the
read API's GET only when two GETs around it agree (same `_tick`): the SDK read then saw
that very version.
"""
import json
import sys

import requests
from feast import FeatureService, FeatureStore

repo, base, wanted = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = FeatureStore(repo_path=repo)
report = {"compared": 0, "mismatches": [], "errors": {}, "service_columns": None}


def get(doc):
    r = requests.get(f"{base}/features/doc/{doc}", timeout=10)
    return r.json()["features"] if r.status_code == 200 else None


service = store.get_feature_service("doc_service")
docs = []
for i in range(5000):
    if len(docs) == wanted:
        break
    if get(f"doc-{i}") is not None:
        docs.append(f"doc-{i}")
report["stored"] = len(docs)
for doc in docs:
    for _ in range(20):
        before = get(doc)
        got = store.get_online_features(features=service, entity_rows=[{"doc_id": doc}]).to_dict()
        after = get(doc)
        if before is None or after is None or before.get("_tick") != after.get("_tick"):
            continue
        report["service_columns"] = sorted(got.keys())
        for name, values in got.items():
            if name == "doc_id":
                continue
            want = after.get(name)
            # ctr_decay is evaluated at each read's own time: equal to 1e-6 relative
            if name == "ctr_decay" and want is not None and values[0] is not None:
                same = abs(values[0] - want) <= 1e-6 * max(1.0, abs(want))
            else:
                same = values[0] == want
            if not same:
                report["mismatches"].append([doc, name, values[0], want])
        report["compared"] += 1
        break

# what Feast's own server refuses, refused the same way (the SDK maps each to its class)
cases = {
    "collision": dict(features=["doc:clicks_7d", "qd:clicks_7d"]),
    "no_features": dict(features=[]),
    "unknown_view": dict(features=["nope:clicks_7d"]),
    "unknown_service": dict(features=FeatureService(name="not_served", features=[store.get_feature_view("doc")])),
}
for name, kw in cases.items():
    try:
        store.get_online_features(entity_rows=[{"doc_id": docs[0], "query_hash": "q"}], **kw)
        report["errors"][name] = None
    except Exception as e:  # noqa: BLE001 - the class is what is checked
        report["errors"][name] = [type(e).__module__, type(e).__name__, str(e)]

full = store.get_online_features(features=["doc:clicks_7d", "qd:clicks_7d"], entity_rows=[{"doc_id": docs[0], "query_hash": "q"}], full_feature_names=True).to_dict()
report["full_names"] = sorted(full.keys())
print(json.dumps(report))
