// hostenvLint: a service repository's hygiene: contracts hold placeholders, no
// .env is committed, the library's credential maps match the contracts. Marks
// the build unstable on findings. Help: hostenvLint.txt.
def call(Map config = [:]) {
    def args = null
    try {
        args = hostenv.arguments('hostenvLint', config, [path: '.', services: []], [])
        hostenv.expect('hostenvLint', 'path', args.path, String, false)
        hostenv.expect('hostenvLint', 'services', args.services, List)
    } catch (IllegalArgumentException invalid) {
        error(invalid.message)
    }
    return hostenv.lint(args.path, args.services, args)
}
