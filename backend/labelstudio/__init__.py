"""Everything that translates between Label Studio and masks; no HTTP server in here.

Why a package of its own: the prediction server, the webhook handler and the retraining
data loader all speak Label Studio's formats (labeling configs, task image URLs, brush RLE,
result dicts), and they must speak them the same way.

| module | job |
| --- | --- |
| :mod:`.rle` | brush RLE <-> mask, byte-identical to ``label_studio_sdk.converter.brush`` |
| :mod:`.config` | which ``BrushLabels`` -> ``Image`` pair and label to predict for |
| :mod:`.auth` | request headers for a legacy token or a personal access token |
| :mod:`.hosts` | which hosts and addresses may be fetched (SSRF guard) |
| :mod:`.datapaths` | which paths on Label Studio's host get the token (its data routes only) |
| :mod:`.fetch` | image bytes for every way Label Studio stores images |
| :mod:`.webhooks` | the basic-auth header the backend's webhook in Label Studio lacks, and its patch |
| :mod:`.tasks` | a task's image as an RGB array, or one error that says why not |
| :mod:`.results` | a mask as a Label Studio prediction result |
"""
