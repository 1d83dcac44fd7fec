"""The test app (the `aviator-testapp` image) and the quick-start manifests, shipped
inside the aviator package as `aviator.box.quickstart` (see setup.py): the box runs
testapp.py as its pods' process and `aviator box demo` applies the manifests."""
