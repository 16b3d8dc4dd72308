"""Drives a plexserve server with tritonclient.grpc's own stubs (run as a separate process:
tritonclient's protobuf modules and ours declare the same `inference.*` names).

usage: python tritonclient_session.py ADDRESS INPUTS.npz OUTPUTS.npz  -> prints a JSON report
INPUTS.npz holds arrays named "MODEL/INPUT"; OUTPUTS.npz receives "MODEL/OUTPUT" for every output.
"""

import json
import sys
from collections import defaultdict

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

address, inputs_path, outputs_path = sys.argv[1:4]
client = triton.InferenceServerClient(address)
report = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "server": client.get_server_metadata(as_json=True),
    "model_ready": client.is_model_ready("multi_input"),
    "metadata": client.get_model_metadata("multi_input", as_json=True),
    "config": client.get_model_config("multi_input", as_json=True),
}

requests = defaultdict(dict)
with np.load(inputs_path, allow_pickle=True) as data:
    for key in data.files:
        model, name = key.split("/")
        requests[model][name] = data[key]

outputs = {}
for model, arrays in requests.items():
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs, request_id=f"triton-{model}")
    response = result.get_response()
    report.setdefault("versions", {})[model] = response.model_version
    for output in response.outputs:
        outputs[f"{model}/{output.name}"] = result.as_numpy(output.name)
np.savez(outputs_path, **outputs)

try:
    client.infer("no_such_model", inputs)
except InferenceServerException as error:
    report["error"] = {"status": error.status(), "message": error.message()}
print(json.dumps(report))
