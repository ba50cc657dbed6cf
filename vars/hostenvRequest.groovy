// hostenvRequest: write the request another step would send (a Deploy, or a
// Rotation with `deployments`) to `output`, for `hostenv sudoers` and
// `hostenv host-install`; binds nothing. Help: hostenvRequest.txt.
def call(Map config = [:]) {
    return hostenv.writeRequest('hostenvRequest', config)
}
