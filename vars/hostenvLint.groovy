// hostenvLint: a service repository's hygiene: contracts hold placeholders, no
// .env is committed, the library's credential maps match the contracts. Marks
// the build unstable on findings. Help: hostenvLint.txt.
def call(Map config = [:]) {
    def args = hostenv.checked {
        def given = hostenv.arguments('hostenvLint', config, [path: '.', services: []], [])
        hostenv.expect('hostenvLint', 'path', given.path, String, false)
        hostenv.expect('hostenvLint', 'services', given.services, List)
        return given
    }
    return hostenv.lint(args.path, args.services, args)
}
