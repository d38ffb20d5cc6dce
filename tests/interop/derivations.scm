;;; derivations.scm -- `.drv' items through add-text-to-store (the daemon
;;; parses them and checks their output paths), and the queries on them:
;;; query-derivation-outputs, query-derivation-output-names,
;;; valid-derivers, query-deriver; then `.drv' texts a daemon refuses.

(load (string-append (dirname (current-filename)) "/common.scm"))
(use-modules (guix derivations))

;; Not exported by (guix derivations).
(define derivation->bytes (@@ (guix derivations) derivation->bytevector))

(define s (connect))
(define %system "x86_64-linux")

(define builder
  (add-text-to-store s "builder.sh" "echo building > $out\n" '()))
(define other-builder
  (add-text-to-store s "other-builder.sh" "echo other > $out\n" '()))

(define (query-derivation-output-names store path)
  (raw-operation store 28
                 (lambda (p) (write-string path p))
                 read-string-list))

(define (query-deriver store path)
  (raw-operation store 18
                 (lambda (p) (write-string path p))
                 read-string))

(define (item-name path)
  "The name part of store path PATH (after the hash part and the dash)."
  (let ((base (basename path)))
    (substring base (+ 1 (string-index base #\-)))))

(define (drv-references drv)
  (sort (append (derivation-sources drv)
                (map derivation-input-path (derivation-inputs drv)))
        string<?))

(define (derivation! label thunk)
  "Make a derivation with THUNK; record its file name, outputs, path info
and the daemon's answers to the derivation queries; check them against the
client's own view.  Return the derivation or #f."
  (let ((drv (expect-ok! label thunk
                         #:encode
                         (lambda (drv)
                           `(("file" . ,(derivation-file-name drv))
                             ("outputs"
                              . ,(map (match-lambda
                                        ((name . out)
                                         (cons name
                                               (derivation-output-path out))))
                                      (derivation-outputs drv))))))))
    (when drv
      (let* ((file (derivation-file-name drv))
             (outputs (derivation->output-paths drv))
             (names (map car outputs))
             (paths (map cdr outputs)))
        (check! (string-append label ": file name")
                (equal? file
                        (text-store-path (item-name file)
                                         (derivation->bytes drv)
                                         (drv-references drv)))
                file)
        (let ((info (expect-ok! (string-append label ": query-path-info")
                                (lambda () (query-path-info s file))
                                #:encode path-info->json)))
          (when info
            (check-path-info! label info file)
            (check! (string-append label ": references")
                    (equal? (path-info-references info)
                            (drv-references drv)))))
        (record! (string-append label ": files") (listing file))
        (check! (string-append label ": query-derivation-outputs")
                (equal? (expect-ok! (string-append label
                                                   ": query-derivation-outputs")
                                    (lambda ()
                                      (query-derivation-outputs s file))
                                    #:encode paths->json)
                        (sort paths string<?)))
        (check! (string-append label ": query-derivation-output-names")
                (equal? (expect-ok! (string-append
                                     label ": query-derivation-output-names")
                                    (lambda ()
                                      (query-derivation-output-names s file))
                                    #:encode list->vector)
                        (sort names string<?)))
        (check! (string-append label ": query-deriver of the .drv")
                (equal? (expect-ok! (string-append label ": query-deriver")
                                    (lambda () (query-deriver s file)))
                        ""))
        (for-each
         (lambda (name path)
           (let ((what (string-append label ": output " name)))
             (check! (string-append what ": valid-derivers")
                     (member file
                             (or (expect-ok! (string-append what
                                                            ": valid-derivers")
                                             (lambda () (valid-derivers s path))
                                             #:encode paths->json)
                                 '())))
             (check! (string-append what ": not built")
                     (equal? (step! (string-append what ": valid-path?")
                                    (lambda () (valid-path? s path)))
                             '(ok . #f)))
             (expect-error! (string-append what ": query-deriver")
                            (lambda () (query-deriver s path))
                            "is not valid")))
         names paths)))
    drv))

;;; Valid derivations.

(define simple
  (derivation! "simple"
               (lambda ()
                 (derivation s "simple" "/bin/sh" (list builder)
                             #:system %system #:sources (list builder)
                             #:env-vars '(("VAR" . "value")
                                          ("ANOTHER" . "with \"quotes\" and \\"))))))

(define multi
  (derivation! "multiple outputs"
               (lambda ()
                 (derivation s "multi" "/bin/sh" (list builder)
                             #:system %system #:sources (list builder)
                             #:outputs '("out" "dev" "doc")))))

(define dependent
  (derivation! "with derivation inputs"
               (lambda ()
                 (derivation s "dependent" "/bin/sh" (list builder)
                             #:system %system #:sources (list builder)
                             #:inputs (list (derivation-input multi '("dev" "out"))
                                            (derivation-input simple))))))

(define (fixed! label name builder-file algo recursive?)
  (let* ((contents (string->utf8 "fixed contents\n"))
         (hash (if recursive?
                   (digest algo
                           (nar-bytes (make-tree "fixed"
                                                 `(regular ,contents))))
                   (digest algo contents))))
    (derivation! label
                 (lambda ()
                   (derivation s name "/bin/sh" (list builder-file)
                               #:system %system #:sources (list builder-file)
                               #:hash hash #:hash-algo algo
                               #:recursive? recursive?)))))

(define fixed-sha256 (fixed! "fixed output, sha256" "fixed" builder 'sha256 #f))
(fixed! "fixed output, sha256, recursive" "fixed" builder 'sha256 #t)
(fixed! "fixed output, sha1" "fixed" builder 'sha1 #f)
(fixed! "fixed output, sha512" "fixed" builder 'sha512 #f)
(define fixed-again
  (fixed! "fixed output, same hash, other builder" "fixed" other-builder
          'sha256 #f))

(when (and fixed-sha256 fixed-again)
  (let ((out (derivation->output-path fixed-sha256)))
    (check! "two fixed-output derivations share their output"
            (equal? out (derivation->output-path fixed-again)))
    (check! "valid-derivers of a shared fixed output"
            (equal? (expect-ok! "valid-derivers of a shared fixed output"
                                (lambda () (valid-derivers s out))
                                #:encode paths->json)
                    (sort (list (derivation-file-name fixed-sha256)
                                (derivation-file-name fixed-again))
                          string<?)))))

;;; The derivation queries on items that are not derivations.

(record! "query-derivation-outputs of a text item"
         (outcome->json (attempt (lambda () (query-derivation-outputs s builder)))
                        paths->json))
(check! "query-derivation-output-names of a text item"
        (equal? (expect-ok! "query-derivation-output-names of a text item"
                            (lambda ()
                              (query-derivation-output-names s builder))
                            #:encode list->vector)
                '()))
(check! "valid-derivers of a text item"
        (equal? (expect-ok! "valid-derivers of a text item"
                            (lambda () (valid-derivers s builder))
                            #:encode paths->json)
                '()))
(expect-error! "query-derivation-outputs of an invalid path"
               (lambda () (query-derivation-outputs s %missing))
               "is not valid")
(step-alive! "alive after query-derivation-outputs invalid" s #t)
(expect-error! "query-derivation-output-names of an invalid path"
               (lambda () (query-derivation-output-names s %missing))
               "is not valid")
(step-alive! "alive after query-derivation-output-names invalid" s #t)
(check! "valid-derivers of an invalid path"
        (equal? (expect-ok! "valid-derivers of an invalid path"
                            (lambda () (valid-derivers s %missing))
                            #:encode paths->json)
                '()))

;;; `.drv' texts a daemon refuses; the session goes on.

(define simple-text (utf8->string (derivation->bytes simple)))
(define simple-out (derivation->output-path simple))
(define wrong-out
  ;; Same name, another hash part.
  (in-store (string-append (make-string 32 #\1) "-simple")))

(define (replace-all str old new)
  (let loop ((str str))
    (let ((i (string-contains str old)))
      (if i
          (loop (string-append (substring str 0 i) new
                               (substring str (+ i (string-length old)))))
          str))))

(define (replace-last str old new)
  (let loop ((i (- (string-length str) (string-length old))))
    (cond ((< i 0) str)
          ((string=? (substring str i (+ i (string-length old))) old)
           (string-append (substring str 0 i) new
                          (substring str (+ i (string-length old)))))
          (else (loop (- i 1))))))

(define (fixed-text name algo hash)
  ;; A fixed-output derivation written by hand, with a placeholder output
  ;; path: the daemon must parse the hash before it can compare paths.
  (let ((out (in-store (string-append (make-string 32 #\2) "-" name))))
    (string-append "Derive([(\"out\",\"" out "\",\"" algo "\",\"" hash "\")],"
                   "[],[],\"" %system "\",\"/bin/sh\",[],"
                   "[(\"out\",\"" out "\")])")))

(define (refused-drv! label name text refs expected)
  (expect-error! label (lambda () (add-text-to-store s name text refs))
                 expected)
  (step-alive! (string-append "alive after " label) s #t))

(refused-drv! "drv with a wrong output path" "simple.drv"
              (replace-all simple-text simple-out wrong-out) (list builder)
              "has incorrect output")
(refused-drv! "drv with a wrong output path in its environment" "simple.drv"
              (replace-last simple-text simple-out wrong-out) (list builder)
              "has incorrect output")
(refused-drv! "drv stored under another name" "other-name.drv"
              simple-text (list builder)
              "has incorrect output")
(refused-drv! "drv that is not ATerm" "garbage.drv" "garbage" '()
              "error parsing derivation")
(refused-drv! "drv cut short" "simple.drv" "Derive([(\"out\"," '()
              "error parsing derivation")
(refused-drv! "empty drv" "empty.drv" "" '()
              "error parsing derivation")
(refused-drv! "fixed output, sha512 hash of 3 bytes" "bad-hash.drv"
              (fixed-text "bad-hash" "sha512" "010203") '()
              "invalid SHA512 hash")
(refused-drv! "fixed output, odd-length hash" "odd-hash.drv"
              (fixed-text "odd-hash" "r:sha256" "abc") '()
              "invalid SHA256 hash")
(refused-drv! "fixed output, hash not hex" "nothex.drv"
              (fixed-text "nothex" "sha1" (make-string 40 #\z)) '()
              "invalid hash")
(refused-drv! "fixed output, unknown algorithm" "unknown-algo.drv"
              (fixed-text "unknown-algo" "r:sha42" "0102") '()
              "unknown hash algorithm")

;;; A `.drv' whose input derivation is not declared as a reference: the
;;; daemon still finds the input (it is valid) to compute the output path.
(record! "drv with undeclared input derivation"
         (outcome->json
          (attempt (lambda ()
                     (add-text-to-store s "dependent.drv"
                                        (utf8->string
                                         (derivation->bytes dependent))
                                        (list builder))))
          identity))
(step-alive! "alive after undeclared input derivation" s #t)

;;; read-derivation-from-file gives back what was written.
(check! "read-derivation-from-file"
        (equal? (derivation->bytes
                 (read-derivation-from-file (derivation-file-name dependent)))
                (derivation->bytes dependent)))

(finish!)
