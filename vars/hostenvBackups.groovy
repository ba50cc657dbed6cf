// hostenvBackups: list each host's backups before choosing one for
// hostenvRollback's `to`; binds only the SSH key. Help: hostenvBackups.txt.
def call(Map config = [:]) {
    return hostenv.requestStep('hostenvBackups', 'backups', config, [:])
}
