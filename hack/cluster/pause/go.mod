// The pod sandbox's process for the real node (containerd's `sandbox_image`): no registry is reachable, so
// the image is built here from this module (standard library only). Built by hack/cluster/images.py.
module shoprank.local/hack/cluster/pause

go 1.21
