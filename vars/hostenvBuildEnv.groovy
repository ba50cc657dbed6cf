// hostenvBuildEnv: write the console's build-time .env for Vite (a BuildEnv
// request) before `npm run build`. Literal values only. Help: hostenvBuildEnv.txt.
def call(Map config = [:]) {
    def args = hostenv.checked {
        def given = hostenv.arguments('hostenvBuildEnv', config,
            [contract: null, from: null, values: [:], optional: [], output: '.env', mode: null], ['contract'])
        hostenv.expect('hostenvBuildEnv', 'values', given.values, Map)
        hostenv.expect('hostenvBuildEnv', 'optional', given.optional, List)
        return given
    }
    def request = hostenv.buildEnvRequest(args)
    return hostenv.execute('build-env', request, [], args)
}
