;;; common.scm -- helpers shared by the golden-vector generators.
;;;
;;; Loaded (with `load') by every other script in this directory; the scripts
;;; run inside the Guix root with `guix repl -- SCRIPT.scm OUT.json', so only
;;; the Guix 1.5.0 client modules are available.  Everything here is
;;; deterministic: no clocks, no process ids, sorted or declared orders only.

(use-modules (guix store)
             (guix base16)
             (guix base32)
             (guix serialization)
             (gcrypt hash)
             (json)
             (rnrs bytevectors)
             (rnrs io ports)
             (ice-9 match)
             (srfi srfi-1)
             (srfi srfi-26)
             (srfi srfi-34)
             (srfi srfi-35))

;; A closed connection must turn into an exception, not kill the script.
(sigaction SIGPIPE SIG_IGN)

;; Every file this script creates gets exactly the mode it asks for.
(umask #o022)

(define (hex bv) (bytevector->base16-string bv))
(define (utf8 s) (string->utf8 s))

;; guile-json writes Scheme vectors as JSON arrays and alists as objects.
(define (arr lst) (list->vector lst))

(define (out-file)
  ;; The JSON file to write, from the command line.
  (match (command-line)
    ((_ file . _) file)
    (_ (error "usage: guix repl -- SCRIPT.scm OUT.json"))))

(define (write-json! obj)
  (call-with-output-file (out-file)
    (lambda (port)
      (set-port-encoding! port "UTF-8")
      (scm->json obj port)
      (newline port))))

(define (scratch-dir)
  ;; A private work directory inside the Guix root, made by generate.sh.
  (or (getenv "GOLDEN_SCRATCH") (error "GOLDEN_SCRATCH is not set")))

(define (nar-bytes file)
  "The NAR serialisation of FILE as produced by (guix serialization)."
  (call-with-values open-bytevector-output-port
    (lambda (port get)
      (write-file file port)
      (get))))

;;; Trees.
;;;
;;; A tree is one of
;;;   (regular BYTEVECTOR)                a non-executable regular file
;;;   (executable BYTEVECTOR)             an executable regular file (0755)
;;;   (pattern SIZE PATTERN-BV EXEC?)     a regular file whose byte I is
;;;                                       PATTERN[I mod (length PATTERN)]
;;;   (symlink TARGET-STRING)
;;;   (directory (NAME TREE) ...)         entries in declaration order
;;; and is described in JSON by `tree->json' (see README.md).

(define (pattern-bytes size pattern)
  (let ((bv (make-bytevector size))
        (n (bytevector-length pattern)))
    (let loop ((i 0))
      (when (< i size)
        (bytevector-u8-set! bv i (bytevector-u8-ref pattern (modulo i n)))
        (loop (+ i 1))))
    bv))

(define (tree->json tree)
  (match tree
    (('regular bv)
     `(("type" . "regular") ("executable" . #f) ("contents_hex" . ,(hex bv))))
    (('executable bv)
     `(("type" . "regular") ("executable" . #t) ("contents_hex" . ,(hex bv))))
    (('pattern size pattern exec?)
     `(("type" . "regular") ("executable" . ,exec?)
       ("size" . ,size) ("pattern_hex" . ,(hex pattern))))
    (('symlink target)
     `(("type" . "symlink") ("target" . ,target)))
    (('directory entries ...)
     `(("type" . "directory")
       ("entries" . ,(arr (map (match-lambda
                                 ((name sub)
                                  `(("name" . ,name)
                                    ("node" . ,(tree->json sub)))))
                               entries)))))))

(define (write-bytes! file bv mode)
  (call-with-output-file file
    (lambda (port) (put-bytevector port bv))
    #:binary #t)
  (chmod file mode))

(define (create-tree! file tree)
  "Create TREE at FILE, which must not exist yet."
  (match tree
    (('regular bv) (write-bytes! file bv #o644))
    (('executable bv) (write-bytes! file bv #o755))
    (('pattern size pattern exec?)
     (write-bytes! file (pattern-bytes size pattern) (if exec? #o755 #o644)))
    (('symlink target) (symlink target file))
    (('directory entries ...)
     (mkdir file #o755)
     (for-each (match-lambda
                 ((name sub) (create-tree! (string-append file "/" name) sub)))
               entries))))

(define (tree-regular-contents tree)
  "The contents of TREE if it is a regular file, else #f."
  (match tree
    (((or 'regular 'executable) bv) bv)
    (('pattern size pattern _) (pattern-bytes size pattern))
    (_ #f)))

(define %tree-counter 0)

(define (materialise tree)
  "Create TREE under a fresh name in the scratch directory; return the name."
  (set! %tree-counter (+ 1 %tree-counter))
  (let ((dir (string-append (scratch-dir) "/trees/"
                            (basename (out-file) ".json"))))
    (unless (file-exists? dir) (mkdir dir))
    (let ((file (string-append dir "/t" (number->string %tree-counter))))
      (create-tree! file tree)
      file)))

;;; Daemon access.

(define (connect)
  (open-connection))

(define (daemon-error thunk)
  "Call THUNK; return (values #f MESSAGE STATUS) if the daemon answered with
an error, (values RESULT #f #f) otherwise."
  (guard (c ((store-protocol-error? c)
             (values #f (store-protocol-error-message c)
                     (store-protocol-error-status c))))
    (values (thunk) #f #f)))

(define (export-bytes store path)
  "The unsigned export bundle of PATH alone, as the client writes it."
  (call-with-values open-bytevector-output-port
    (lambda (port get)
      (export-paths store (list path) port #:sign? #f)
      (get))))

(define (bytevector-slice bv start len)
  (let ((out (make-bytevector len)))
    (bytevector-copy! bv start out 0 len)
    out))

(define (text-path name contents refs)
  "The store path of a text item, from the client's `store-path'."
  (store-path (string-append "text"
                             (string-concatenate
                              (map (cut string-append ":" <>)
                                   (sort refs string<?))))
              (sha256 contents)
              name))

(define %algorithms
  ;; The algorithms the daemon accepts, in a fixed order.
  '(md5 sha1 sha256 sha512 sha3-256 sha3-512 blake2s-256))

(define (digest algo bv)
  (bytevector-hash bv (lookup-hash-algorithm algo)))
