// hostenvDrift: do the hosts still hold what a deploy would write? Marks the
// build unstable when one does not. Help: hostenvDrift.txt.
def call(Map config = [:]) {
    return hostenv.requestStep('hostenvDrift', 'drift', config, [:])
}
