// hostenvRollback: put back the newest backup (or `to: N`) on every host,
// restart and verify; binds no service credential. Help: hostenvRollback.txt.
def call(Map config = [:]) {
    return hostenv.requestStep('hostenvRollback', 'rollback', config, [to: null, approvedBy: null])
}
